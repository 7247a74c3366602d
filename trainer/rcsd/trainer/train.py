"""The on-policy trainer: RCSD, OPSD and GRPO in one loop that reads top to bottom.

    from rcsd.trainer.config import load_config
    from rcsd.trainer.train import main
    main(load_config("smollm2_cpu.yaml", ["steps=20"]))        # or: rcsd train smollm2_cpu.yaml steps=20

One RCSD step, per rank (each its share of the step's questions):
1. rubrics for the step's questions, fetched during the previous step (the rubric service stores them);
2. with `teacher.reason_first` (the release's layout), first one analysis per question of its
   privileged context, sampled by the rollout engine from the student's current weights in one call
   (recorded in the run's `analyses.jsonl`); then rollouts from the student's current weights, one
   group (G answers) per question, with the student's own prompt; as soon as a group exists its
   token ids go to the teacher service (worker thread), so scoring overlaps the sampling of the next
   groups;
3. per group, the student's logits on the same positions, the loss on the teacher's top-K, backward;
   each group's loss is weighted by its completions / the step's global completion count, so the
   update is the mean over every completion of every rank of its token mean (`loss.normalize:
   completion`, the release's; `token`: by tokens / the global token count, one token mean);
4. gradients summed over ranks (torch DDP or FSDP2, `distributed.strategy`), optimizer step, the
   rollout engine follows the new weights.
Stage I (`stage: rubric_generator`) is the same loop on another task (`rcsd.trainer.tasks`): the student
writes rubrics and the teacher sees reference rubrics. OPSD is the same with
`teacher.context_mode=reference` (no rubrics); GRPO replaces the teacher with the
answer checker's reward and group-normalised advantages. The teacher is whatever the teacher service
serves: the frozen base model in the released recipe.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcsd.client import to_padded_tensors
from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer import distributed, losses
from rcsd.trainer.analysis import analyses_file, record_analyses, sample_analyses
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.data.questions import Question
from rcsd.trainer.judge import judge_for, judged_reward
from rcsd.trainer.metrics import NullLogger, RunLogger, plot_curves
from rcsd.trainer.rollout import HfRollout, Rollout, RolloutEngine, SamplingParams
from rcsd.trainer.service_calls import Rubric, Scored, ServiceCalls
from rcsd.trainer.student import CompletionScores, Student, load_student
from rcsd.trainer.tasks import AnsweringQuestions, Task, make_task

CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class Group:
    """One question of the step and the student's answers to it."""

    position: int  # in the run's data order (global: the same on every world size)
    question: Question
    rollouts: list[Rollout]
    rubric: Rubric | None
    analysis: Rollout | None = None  # teacher.reason_first: the analysis the teacher scores after


@dataclass
class Run:
    """What every step uses: the config, the ranks, the student and its optimiser, the task, the engine."""

    config: TrainConfig
    dist: distributed.Dist
    student: Student
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    task: Task
    has_teacher: bool
    engine: RolloutEngine
    order: DataOrder
    first_step: int
    position: int  # the data position of `first_step`
    parallel: distributed.Parallel  # the loss forward, gradient sync and checkpoint states over ranks
    run_dir: Path | None = None  # where the step's records go (the reason-first analyses)

    def step_questions(self, step: int) -> list[tuple[int, Question]]:
        """This rank's share of step `step`'s questions, with their global data positions."""
        start = self.position + (step - self.first_step) * self.config.prompts_per_step
        share = self.dist.share(self.config.prompts_per_step)
        return [(start + i, self.task.questions[self.order.index(start + i)]) for i in share]


def main(config: TrainConfig, *, resume: bool = False) -> Path:
    """Train for `config.steps` optimizer steps (continuing the latest checkpoint with `resume`)."""
    dist = distributed.setup(config.device)
    run_dir = Path(config.output_dir)
    resume_from = ckpt.latest(run_dir) if resume else None
    if dist.is_main:
        _prepare_run_dir(run_dir, config, resume, resume_from)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    student = load_student(config, dist.device, resume_from)
    calls = ServiceCalls(config)
    task = make_task(config, calls, student.tokenizer)
    config = task.config = _resolve_steps(config, task, dist.is_main)  # with `epochs`, the step count
    teacher_name = calls.check_teacher(
        student.tokenizer, student.model.get_output_embeddings().weight.shape[0]
    )
    run = _start(config, dist, student, task, calls.teacher is not None, run_dir, resume_from)
    probe = task.probe(student, run_dir)
    logger = (
        RunLogger(
            run_dir,
            total_steps=config.steps,
            first_step=run.first_step,
            progress=config.progress,
            report_to=config.report_to,
            config=config.model_dump(mode="json"),
            wandb_project=config.wandb_project,
        )
        if dist.is_main
        else NullLogger()
    )
    if dist.is_main:
        print(f"student {student.model_path} ({student.dtype_reason}); teacher {teacher_name}; run {run_dir}")
    try:
        if probe is not None and run.first_step == 0:
            probe.measure("before", dist)
        rubrics_ahead: dict[int, list[Future[Rubric]]] = {}
        for step in range(run.first_step, config.steps):
            logger.log(step + 1, train_step(run, step, rubrics_ahead))
            _maybe_checkpoint(run, step + 1, run_dir)
        if probe is not None:
            probe.measure("after", dist)
    finally:  # also when a step fails: worker threads, HTTP clients and the process group go
        logger.close()
        calls.close()
        run.engine.close()
        distributed.teardown()
    if dist.is_main and config.plots:
        plot_curves(run_dir)
    if dist.is_main and probe is not None:
        print(probe.write_report())
    return run_dir


def _start(
    config: TrainConfig,
    dist: distributed.Dist,
    student: Student,
    task: Task,
    has_teacher: bool,
    run_dir: Path,
    resume_from: Path | None,
) -> Run:
    """The student under DDP / FSDP, its optimiser and schedule (restored from `resume_from`), the data
    order and the rollout engine."""
    parallel = distributed.Parallel(student.model, config.distributed.strategy, dist)  # before the optimiser
    optimizer = torch.optim.AdamW(
        student.trainable,
        lr=config.lr,
        betas=config.adam_betas,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    first_step, position = 0, 0
    if resume_from is not None:
        state = ckpt.load_state(resume_from, dist.rank)  # RNG states restored here
        parallel.load_optimizer_state(optimizer, state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        first_step, position = state.step, state.data_position
    order = DataOrder(len(task.questions), config.seed)
    engine = _rollout_engine(config, student, dist, run_dir)
    return Run(
        config,
        dist,
        student,
        optimizer,
        scheduler,
        task,
        has_teacher,
        engine,
        order,
        first_step,
        position,
        parallel,
        run_dir,
    )


def train_step(run: Run, step: int, rubrics_ahead: dict[int, list[Future[Rubric]]]) -> dict[str, float]:
    """One optimizer step on this rank's share of step `step`; returns the step's metrics (all ranks)."""
    config, task = run.config, run.task
    times: dict[str, float] = defaultdict(float)
    step_started = time.perf_counter()
    mine = run.step_questions(step)

    # 1. rubrics: this step's were sent during the last one; send the next step's now
    if step not in rubrics_ahead:
        rubrics_ahead[step] = task.fetch_rubrics([q for _, q in mine])
    if config.overlap and step + 1 < config.steps:
        rubrics_ahead[step + 1] = task.fetch_rubrics([q for _, q in run.step_questions(step + 1)])
    started = time.perf_counter()
    rubrics = [f.result() for f in rubrics_ahead.pop(step)] or [None] * len(mine)
    times["rubrics"] = time.perf_counter() - started

    # 2. rollouts, group by group; each group goes to the teacher as soon as it exists
    started = time.perf_counter()
    groups, scoring = _sample_groups(run, step, mine, rubrics)
    if hasattr(run.engine, "sleep"):  # colocated vLLM frees its memory for the forward and backward
        run.engine.sleep()
    times["rollout"] = time.perf_counter() - started
    [global_count] = run.dist.sum([_loss_count(config, groups)])  # completions or tokens, all ranks

    # 3. per group: teacher scores (waited for only if not there yet), student logits, loss, backward
    sums: dict[str, float] = defaultdict(float)
    for group in groups:
        if group.analysis is not None:
            sums["analysis_tokens"] += len(group.analysis.completion_ids)
            sums["analyses"] += 1
            sums["analysis_truncated"] += group.analysis.truncated
    for i, group in enumerate(groups):
        started = time.perf_counter()
        scored = scoring[i].result() if scoring else None
        times["teacher_wait"] += time.perf_counter() - started
        started = time.perf_counter()
        with run.parallel.accumulate(sync=i == len(groups) - 1):  # DDP all-reduces on the last
            loss, count = _group_loss(config, run.student, run.parallel, group, scored, sums)
            (loss * count / max(global_count, 1.0)).backward()
        times["student"] += time.perf_counter() - started

    # 4. one optimizer step on the global average, then the rollout engine follows the new weights
    started = time.perf_counter()
    if config.grad_clip is not None:
        sums["grad_norm"] = run.parallel.clip_grad_norm(config.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    times["optimizer"] = time.perf_counter() - started
    started = time.perf_counter()
    run.engine.update(run.student.model)
    times["update"] = time.perf_counter() - started
    times["step"] = time.perf_counter() - step_started
    return _step_metrics(config, run.dist, sums, times, run.scheduler.get_last_lr()[0])


def _sample_groups(
    run: Run, step: int, mine: list[tuple[int, Question]], rubrics: list[Rubric | None]
) -> tuple[list[Group], list[Future[Scored]]]:
    """Each question's group of answers; with `overlap`, each is sent for scoring as soon as it exists."""
    config, student = run.config, run.student
    student.model.eval()
    analyses: list[Rollout | None] = [None] * len(mine)
    if config.teacher.reason_first and mine:
        assert isinstance(run.task, AnsweringQuestions)  # the config allows reason_first in Stage II only
        sampled = sample_analyses(run.engine, run.task, student.tokenizer, config, mine, rubrics)
        if run.run_dir is not None:
            path = analyses_file(run.run_dir, run.dist.rank)
            record_analyses(path, step + 1, mine, sampled, student.tokenizer)
        analyses = list(sampled)
    requests = [
        (
            run.task.prompt_ids(student.tokenizer, question),
            SamplingParams(
                max_new_tokens=config.sampling.max_new_tokens,
                temperature=config.sampling.temperature,
                top_p=config.sampling.top_p,
                top_k=config.sampling.top_k,
                seed=_group_seed(config.seed, pos),
            ),
        )
        for pos, question in mine
    ]
    done: dict[int, Group] = {}
    futures: dict[int, Future[Scored]] = {}
    for i, rollouts in _stream(run.engine, requests, config.rollouts_per_prompt, config.sampling.batched):
        (pos, question), rubric, analysis = mine[i], rubrics[i], analyses[i]
        done[i] = Group(pos, question, rollouts, rubric, analysis)
        if config.overlap and run.has_teacher:  # each group is scored as soon as it finishes
            futures[i] = _score(run, done[i])
    groups = [done[i] for i in range(len(mine))]
    scoring = [futures[i] for i in range(len(mine))] if futures else []
    if not config.overlap and run.has_teacher:  # the baseline: score after sampling
        scoring = [_score(run, g) for g in groups]
    student.model.train()
    return groups, scoring


def _stream(
    engine: Any, requests: list[tuple[list[int], SamplingParams]], n: int, batched: bool
) -> Iterator[tuple[int, list[Rollout]]]:
    """`(index, rollouts)` per request as each finishes: all at once where the engine streams
    (`sample_stream`: hf batches them, vLLM sends them together) and `batched`, else one request
    at a time. Each request keeps its own seed, so the tokens do not depend on the batching."""
    if batched and hasattr(engine, "sample_stream"):
        yield from engine.sample_stream(requests, n)
        return
    for i, (prompt, params) in enumerate(requests):
        [rollouts] = engine.sample([prompt], params, n=n)
        yield i, rollouts


def _score(run: Run, group: Group) -> Future[Scored]:
    analysis_ids = group.analysis.completion_ids if group.analysis is not None else None
    return run.task.score(group.question, group.rubric, _ids(group), analysis_ids)


def _maybe_checkpoint(run: Run, done: int, run_dir: Path) -> None:
    config = run.config
    if done % config.checkpoint_every and done != config.steps:
        return
    state = ckpt.TrainerState(
        step=done,
        data_position=run.position + (done - run.first_step) * config.prompts_per_step,
        optimizer=run.parallel.optimizer_state(run.optimizer),  # every rank: a collective under fsdp
        scheduler=run.scheduler.state_dict(),
    )
    ckpt.save(
        ckpt.checkpoint_dir(run_dir, done),
        run.student.model,
        run.student.tokenizer,
        state,
        is_lora=run.student.is_lora,
        rank=run.dist.rank,
        barrier=run.dist.barrier,
        model_state=run.parallel.full_state(),  # fsdp: gathered on rank 0; else the model's own
    )


def _rollout_engine(
    config: TrainConfig, student: Student, dist: distributed.Dist, run_dir: Path
) -> RolloutEngine:
    """Sampling from the student's current weights: in this process (`hf`, `vllm_colocate`) or a vLLM
    server per rank."""
    if config.rollout_engine == "hf":
        return HfRollout(student.model, student.tokenizer)
    if config.rollout_engine == "vllm_colocate":
        from rcsd.trainer.rollout.colocate import ColocatedVllmRollout

        settings = config.colocate
        colocated = ColocatedVllmRollout(
            student.model_path,
            next(student.model.parameters()).dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            cpu_kv_cache_gb=settings.cpu_kv_cache_gb,
            max_model_len=settings.max_model_len,
            sleep=settings.sleep,
            seed=config.seed,
        )
        colocated.update(student.model)  # the adapter (or a resumed run's weights), not the bare base
        return colocated
    from rcsd.trainer.rollout.vllm import VllmRollout

    urls = config.services.rollout_urls
    if len(urls) < dist.world_size:  # each rank loads its own adapter versions into its server
        raise ValueError(f"rollout_engine=vllm needs one services.rollout_urls entry per rank, got {urls}")
    engine = VllmRollout(
        urls[dist.rank],
        run_dir / "rollout-adapters" / f"rank{dist.rank}",
        api_key=config.services.api_key,
        timeout_s=config.services.deadline_s,
    )
    engine.update(student.model)  # a resumed run's adapter, not the bare base model
    return engine


class DataOrder:
    """Position p of the run -> a question index: a fresh seeded permutation every epoch."""

    def __init__(self, count: int, seed: int) -> None:
        if count == 0:
            raise ValueError("no training questions: set `data` to one or more JSONL files")
        self.count, self.seed = count, seed

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.count)
        return int(np.random.default_rng([self.seed, epoch]).permutation(self.count)[offset])


def _resolve_steps(config: TrainConfig, task: Task, is_main: bool) -> TrainConfig:
    """The config with `steps` from `epochs` (ceil(epochs x questions / prompts_per_step)), once the
    questions are known; reports what the privileged-prompt length filter dropped."""
    kept = len(task.questions)
    if is_main and isinstance(task, AnsweringQuestions) and config.data_max_privileged_prompt_tokens:
        print(
            f"data: dropped {task.dropped_long} of {kept + task.dropped_long} questions whose privileged "
            f"prompt exceeds {config.data_max_privileged_prompt_tokens} tokens; {kept} kept"
        )
    if config.epochs is None:
        return config
    steps = math.ceil(config.epochs * kept / config.prompts_per_step)
    if is_main:
        print(f"epochs {config.epochs}: {steps} steps of {config.prompts_per_step} over {kept} questions")
    return config.model_copy(update={"steps": steps})


def _loss_count(config: TrainConfig, groups: list[Group]) -> float:
    """What this rank's share of the step's loss averages over (`loss.normalize`): completions or tokens."""
    if config.loss.normalize == "completion":
        return float(sum(len(g.rollouts) for g in groups))
    return float(sum(len(r.completion_ids) for g in groups for r in g.rollouts))


def _group_seed(seed: int, position: int) -> int:
    """A group's sampling seed depends on the run's seed and its data position only (not the rank)."""
    return int(np.random.default_rng([seed, position]).integers(2**31 - 1))


def _ids(group: Group) -> list[list[int]]:
    return [r.completion_ids for r in group.rollouts]


def _group_loss(
    config: TrainConfig,
    student: Student,
    parallel: distributed.Parallel,
    group: Group,
    scored: Scored | None,
    sums: dict[str, float],
) -> tuple[torch.Tensor, float]:
    """The group's loss (`loss.normalize`'s mean) and what it averages over (its completions or its valid
    tokens); adds its metrics to `sums`."""
    completions = _ids(group)
    pad_id = student.tokenizer.pad_token_id or 0
    teacher = to_padded_tensors([scored.response]) if scored is not None else None
    scores = parallel.score(
        group.rollouts[0].prompt_ids,
        completions,
        pad_id,
        None if teacher is None else teacher.get("topk_ids_B_T_K"),
        config.loss.chunk_size,
    )
    logprobs_B_T, mask_B_T = scores.logprobs_B_T, scores.mask_B_T
    tokens = float(mask_B_T.sum())
    token_weights_B_T = _sampler_gap(config, group.rollouts, logprobs_B_T, mask_B_T, sums)
    sums["tokens"] += tokens
    sums["rollouts"] += len(completions)
    sums["truncated"] += sum(r.truncated for r in group.rollouts)
    if config.method == "grpo":
        texts = student.tokenizer.batch_decode(completions, skip_special_tokens=True)
        judge = judge_for(config.judge)  # free-form questions: the rubric score; else the answer check
        rewards_B = torch.tensor([judged_reward(judge, text, group.question) for text in texts])
        trl = config.loss.grpo_loss_type == "grpo"
        advantages_B = losses.group_advantages(rewards_B, 1e-4 if trl else 1e-6, unbiased=trl)
        loss, metrics = losses.grpo_loss(
            logprobs_B_T,
            logprobs_B_T.detach(),
            advantages_B.to(logprobs_B_T.device),
            mask_B_T,
            clip_eps=config.loss.grpo_clip_eps,
            loss_type=config.loss.grpo_loss_type,
            token_weights_B_T=token_weights_B_T,
        )
        sums["reward"] += float(rewards_B.sum())
    else:
        assert scored is not None and teacher is not None
        teacher = {k: v.to(logprobs_B_T.device) for k, v in teacher.items()}
        loss, metrics = _distillation_loss(config, scores, teacher, token_weights_B_T)
        with torch.no_grad():
            teacher_lp_B_T = teacher["teacher_logprobs_B_T"]
            sums["kl_sampled"] += float(((logprobs_B_T.detach() - teacher_lp_B_T) * mask_B_T).sum())
            sums["teacher_logprob"] += float((teacher_lp_B_T * mask_B_T).sum())
        sums["teacher_tokens"] += scored.response.context_length + tokens
        sums["teacher_latency"] += scored.latency_s
        sums["teacher_calls"] += 1
        sums["rubric_fallbacks"] += scored.context_mode != config.teacher.context_mode
    count = _loss_count(config, [group])
    for key, value in metrics.items():
        if key != "tokens":  # the loss averages as the step does; the other terms per token
            sums[f"loss_terms/{key}"] += value * (count if key == "loss" else tokens)
    return loss, count


def _sampler_gap(
    config: TrainConfig,
    rollouts: list[Rollout],
    logprobs_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    sums: dict[str, float],
) -> torch.Tensor | None:
    """Adds the sampler-vs-trainer log-prob gap to `sums` where the engine reports its log-probs (both
    at temperature 1: what differs is the engine's kernels and dtype, and the trainer's dropout);
    returns the truncated importance weights with `loss.importance_cap`, else None."""
    sampled = [r.sampler_logprobs for r in rollouts]
    if not _reports_sampler(config) or any(lp is None for lp in sampled):
        return None
    sampler_B_T = torch.zeros_like(logprobs_B_T)
    for b, row in enumerate(sampled):
        sampler_B_T[b, : len(row)] = torch.tensor(row, dtype=sampler_B_T.dtype)
    cap = config.loss.importance_cap
    weights_B_T, gap = losses.truncated_importance_weights(
        logprobs_B_T, sampler_B_T, mask_B_T, cap or math.inf
    )
    tokens = float(mask_B_T.sum())
    sums["sampler_tokens"] += tokens
    sums["sampler_gap"] += gap["sampler_gap"] * tokens
    sums["sampler_gap_abs"] += gap["sampler_gap_abs"] * tokens
    sums["is_capped"] += gap["is_capped_frac"] * tokens
    diff_B_T = torch.where(mask_B_T, (logprobs_B_T.detach() - sampler_B_T).abs(), 0.0)
    sums["sampler_gap_max"] = max(sums["sampler_gap_max"], float(diff_B_T.max()))
    return weights_B_T if cap is not None else None


def _reports_sampler(config: TrainConfig) -> bool:
    """The vLLM engines report the sampler's log-probs (the same on every rank)."""
    return config.rollout_engine != "hf"


def _distillation_loss(
    config: TrainConfig,
    scores: CompletionScores,
    teacher: dict[str, torch.Tensor],
    token_weights_B_T: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    settings = config.loss
    if settings.name == "sampled_rkl":
        return losses.sampled_rkl(
            scores.logprobs_B_T,
            teacher["teacher_logprobs_B_T"],
            scores.mask_B_T,
            advantage_clip=settings.advantage_clip,
            token_weights_B_T=token_weights_B_T,
            normalize=settings.normalize,
        )
    assert scores.topk_logits_B_T_K is not None and scores.in_vocab_B_T_K is not None
    topk = (scores.topk_logits_B_T_K, scores.in_vocab_B_T_K, teacher["topk_logprobs_B_T_K"], scores.mask_B_T)
    weights = {"token_weights_B_T": token_weights_B_T}
    normalize = settings.normalize
    if settings.name == "topk_jsd":
        return losses.topk_jsd(
            *topk, beta=settings.beta, tau=settings.tau, clip=settings.clip, normalize=normalize, **weights
        )
    return losses.topk_fkl(*topk, tau=settings.tau, clip=settings.clip, normalize=normalize, **weights)


def _step_metrics(
    config: TrainConfig, dist: distributed.Dist, sums: dict[str, float], times: dict[str, float], lr: float
) -> dict[str, float]:
    """Sums over ranks turned into means; times are rank 0's (every rank waits for the slowest)."""
    grad_norm = sums.pop("grad_norm", None)
    gap_max = sums.pop("sampler_gap_max", 0.0)
    always = {"tokens", "rollouts", "truncated"}
    if _reports_sampler(config):
        always |= {"sampler_tokens", "sampler_gap", "sampler_gap_abs", "is_capped"}
    if config.teacher.reason_first:
        always |= {"analysis_tokens", "analyses", "analysis_truncated"}
    keys = sorted(set(sums) | always)
    total = dict(zip(keys, dist.sum([sums.get(k, 0.0) for k in keys]), strict=True))
    tokens, rollouts = max(total["tokens"], 1.0), max(total["rollouts"], 1.0)
    loss_over = rollouts if config.loss.normalize == "completion" else tokens  # what the step averaged
    metrics = {
        "loss": total.get("loss_terms/loss", 0.0) / loss_over,
        "lr": lr,
        "rollout_tokens": total["tokens"],
        "rollout_len_mean": total["tokens"] / rollouts,
        "truncation_rate": total["truncated"] / rollouts,
        "tokens_per_s": total["tokens"] / max(times["step"], 1e-9),
        **{f"time/{k}": v for k, v in times.items()},
    }
    metrics.update(
        {k: v / tokens for k, v in total.items() if k.startswith("loss_terms/") and k != "loss_terms/loss"}
    )
    if grad_norm is not None:
        metrics["grad_norm"] = grad_norm
    if _reports_sampler(config):  # trainer log-prob - sampler log-prob, per completion token
        sampled = max(total["sampler_tokens"], 1.0)
        metrics["sampler/logprob_gap_mean"] = total["sampler_gap"] / sampled
        metrics["sampler/logprob_gap_abs_mean"] = total["sampler_gap_abs"] / sampled
        # a max over ranks from a sum: each rank fills its own slot
        metrics["sampler/logprob_gap_abs_max"] = max(
            dist.sum([gap_max if r == dist.rank else 0.0 for r in range(dist.world_size)])
        )
        if config.loss.importance_cap is not None:
            metrics["sampler/is_capped_frac"] = total["is_capped"] / sampled
    if config.method == "grpo":
        metrics["reward_mean"] = total["reward"] / rollouts
    else:
        metrics["kl_sampled"] = total["kl_sampled"] / tokens
        metrics["teacher_logprob_mean"] = total["teacher_logprob"] / tokens
        metrics["teacher_tokens"] = total["teacher_tokens"]
        metrics["teacher_latency_s"] = total["teacher_latency"] / max(total["teacher_calls"], 1.0)
        metrics["rubric_fallbacks"] = total["rubric_fallbacks"]
    if config.teacher.reason_first:
        metrics["analysis_len_mean"] = total["analysis_tokens"] / max(total["analyses"], 1.0)
        metrics["analysis_truncation_rate"] = total["analysis_truncated"] / max(total["analyses"], 1.0)
    return metrics


def _lr_factor(config: TrainConfig) -> Callable[[int], float]:
    warmup, steps = config.warmup_steps, config.steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == "cosine":
            progress = (step - warmup) / max(1, steps - warmup)
            return 0.5 * (1.0 + float(np.cos(np.pi * min(progress, 1.0))))
        if config.lr_schedule == "linear":
            return max(0.0, (steps - step) / max(1, steps - warmup))
        return 1.0

    return factor


def _prepare_run_dir(run_dir: Path, config: TrainConfig, resume: bool, resume_from: Path | None) -> None:
    """Refuse to overwrite another run; save the config (printed too) with the run."""
    if not resume and ckpt.latest(run_dir) is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume, or another output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    text = config.to_yaml()
    print(text)
    (run_dir / CONFIG_FILE).write_text(text)
    if resume:
        print(
            f"resuming from {resume_from}"
            if resume_from
            else f"--resume: no checkpoint in {run_dir}, starting"
        )
