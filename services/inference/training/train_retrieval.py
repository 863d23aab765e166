"""Train the small Llama "retrieval model" on the key–value retrieval task, on CPU.

    python -m services.inference.training.train_retrieval --output-dir services/inference/checkpoints/retrieval-lm

Progress goes to stderr; the output directory gets a Hugging Face Llama checkpoint (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json), training_log.jsonl, training_curve.png and
training_state.pt (optimizer and step, for ``--resume-from``; not needed for serving).

Retrieval needs an induction circuit: a layer-0 head that copies each token's predecessor (so a value knows
its key) and a layer-1 head whose query (the current key) matches those copies. Gradient descent from a
random start does not find it in any affordable time on this machine: the model settles on the "emit some
value seen in the context" plateau, and when only the layer-0 head is built in, training turns that head
into a "look at all values" head within 300 steps instead of using it. So ``init_circuit`` builds both
heads' attention patterns (query/key weights) into the initial weights, within the standard Llama
parameters; the values' copying, the output and everything else are learned, and training may change all
of it. With the circuit in place the task is learned in a few hundred steps; the rest of the curriculum
sharpens it for long contexts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from services.inference.config import ModelConfig
from services.inference.model import Transformer
from services.inference.rope import apply_rotary
from services.inference.training.retrieval_task import (
    IGNORE,
    VOCAB,
    TrainingBatch,
    TrainingShape,
    build_tokenizer,
    evaluate,
    training_batch,
)
from services.inference.weights import load_model, save_model

STATE_FILE = "training_state.pt"
LOG_FILE = "training_log.jsonl"
CURVE_FILE = "training_curve.png"


@dataclass(frozen=True)
class Stage:
    until: float  # share of the run (by step) this stage lasts up to
    shape: TrainingShape


# Short contiguous sequences first (the circuit forms there), then longer ones with positions spread over
# up to 16K so the content match stops depending on distance, then real long contexts with sparse pairs
# (as in the evaluation prompts) so attention learns to stay sharp against thousands of distractors.
CURRICULUM = (
    Stage(0.10, TrainingShape(128, pair_fraction=0.5, repeat_fraction=0.5)),
    Stage(0.35, TrainingShape(256, pair_fraction=0.5, repeat_fraction=0.5, max_span=16384)),
    Stage(0.65, TrainingShape(512, pair_fraction=0.4, repeat_fraction=0.5, max_span=16384)),
    Stage(0.90, TrainingShape(1024, pair_fraction=0.3, repeat_fraction=0.4, max_span=16384)),
    Stage(1.00, TrainingShape(2048, pair_fraction=0.25, repeat_fraction=0.3, max_span=16384)),
)


def stage_shape(step: int, steps: int) -> TrainingShape:
    progress = step / steps
    return next((s.shape for s in CURRICULUM if progress < s.until), CURRICULUM[-1].shape)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        model_type="llama",
        vocab_size=VOCAB.size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        head_dim=args.head_dim,
        max_position_embeddings=16384,
        rope_theta=args.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=(2,),
    )


def _rope_vector(model: Transformer, vector: torch.Tensor, position: int) -> torch.Tensor:
    """``vector`` (head_dim) as RoPE rotates it at ``position``."""
    cos, sin = model.rotary(torch.tensor([position]))
    return apply_rotary(vector.view(1, 1, -1), cos, sin).view(-1)


def init_circuit(model: Transformer, generator: torch.Generator, retrieval_head: bool) -> None:
    """Build the induction circuit's attention patterns into the initial weights (see the module docstring).

    The residual stream is laid out in three parts: token identity in dims [0, half - 1), a direction shared by
    every token at dim half - 1, and an empty "previous token" part in dims [half, hidden).

    * Layer 0, head 0 attends to the previous token: its query and key read only the shared direction, k = κ
      and q = R(-1)κ, so the score between positions m and n is Σᵢ κᵢ² cos(ωᵢ(n - m + 1)), peaked at n = m - 1.
      Half of κ's weight is on the fastest RoPE frequency (to beat the token itself), the rest on the next ones
      down to a wavelength of 2K tokens, so no distance up to 16K brings the phases back in line (the least
      margin this leaves is about 0.2 of the peak). Its value/output copy the token identity into the
      previous-token part.
    * With ``retrieval_head``, layer 1, head 0 matches the current token against the previous-token part, in
      the RoPE dimensions that turn less than a radian over ``max_position_embeddings`` (so the match does not
      fade with distance). Its value/output are left to training.
    """
    config = model.config
    d, hd = config.hidden_size, config.head_dim
    half = d // 2
    if hd < half:
        raise ValueError(f"the circuit needs head_dim >= hidden_size / 2, got {hd} < {half}")
    token_dims, shared = slice(0, half - 1), half - 1
    embed = model.model.embed_tokens.weight
    with torch.no_grad():
        embed[:, half:] = 0.0
        embed[:, shared] = math.sqrt(half - 1)  # as large as a token's own part
        reach = float(model.model.layers[0].input_layernorm(embed)[:, shared].mean())  # after RMSNorm

    frequencies = model.rotary.inv_freq
    fast = int((frequencies > 2 * math.pi / 2048).sum())
    weight = torch.zeros(hd // 2)
    weight[0] = 0.5
    weight[1:fast] = 0.5 / (fast - 1)
    margin = 16.0  # aimed-for score gap (logits) between the previous token and any other: beats 16K distractors
    amplitude = margin * math.sqrt(hd) / 0.2
    kappa = torch.cat([(amplitude * weight).sqrt(), torch.zeros(hd // 2)])
    previous = model.model.layers[0].self_attn
    with torch.no_grad():
        previous.q_proj.weight[:hd] = 0.0
        previous.k_proj.weight[:hd] = 0.0
        previous.q_proj.weight[:hd, shared] = _rope_vector(model, kappa, -1) / reach
        previous.k_proj.weight[:hd, shared] = kappa / reach
        previous.v_proj.weight[:hd] = 0.0
        previous.v_proj.weight[: half - 1, token_dims] = torch.eye(half - 1)
        previous.o_proj.weight[:, :hd] = 0.0
        previous.o_proj.weight[half : 2 * half - 1, : half - 1] = torch.eye(half - 1)
    if not retrieval_head:
        return

    slow = (frequencies * config.max_position_embeddings <= 1.0).nonzero().flatten()
    dims = torch.cat([slow, slow + hd // 2])
    project = torch.linalg.qr(torch.randn(half - 1, len(dims), generator=generator)).Q.T  # orthonormal rows
    gain = math.sqrt(20.0 * math.sqrt(hd) / len(dims))  # the matching key scores about 14 logits, others 0 ± 3
    retrieval = model.model.layers[1].self_attn
    with torch.no_grad():
        retrieval.q_proj.weight[:hd] = 0.0
        retrieval.k_proj.weight[:hd] = 0.0
        retrieval.q_proj.weight[dims, token_dims] = gain * project
        retrieval.k_proj.weight[dims, half : 2 * half - 1] = gain * project


def build_model(config: ModelConfig, seed: int, circuit: str) -> Transformer:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        # Unit-variance embeddings so that Adam's steps are small next to them (at the usual 0.02 they would be
        # rewritten, shared direction included, within a few dozen steps); the final norm scales the tied
        # output projection back to unit-variance logits.
        model.model.embed_tokens.weight.normal_(0.0, 1.0, generator=generator)
        model.model.norm.weight.fill_(config.hidden_size**-0.5)
        for layer in model.model.layers:
            # Residual branches start silent: the model begins as embeddings in, embeddings out.
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    if circuit != "none":
        init_circuit(model, generator, retrieval_head=circuit == "induction")
    return model


def supervised_logits(model: Transformer, batch: TrainingBatch) -> torch.Tensor:
    """Logits at the supervised positions only (Transformer.forward's body, minus projecting every position onto
    the vocabulary, which costs more than the rest of this small model)."""
    cos, sin = model.rotary(batch.positions)
    h = model.model.embed_tokens(batch.tokens)
    for layer in model.model.layers:
        h = h + layer.self_attn(layer.input_layernorm(h), cos, sin)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(model.model.norm(h[batch.targets != IGNORE]))


def plot_curve(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8)
    loss_ax.set(xlabel="step", ylabel="loss (supervised values)", yscale="log", title="training loss")
    acc_ax.plot([r["step"] for r in train], [r["train_accuracy"] for r in train], lw=0.6, alpha=0.5, label="train")
    for length in sorted({int(k) for r in evals for k in r["eval"]}):
        points = [(r["step"], r["eval"][str(length)]) for r in evals if str(length) in r["eval"]]
        acc_ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=f"eval {length} tokens")
    acc_ax.set(xlabel="step", ylabel="accuracy", ylim=(0, 1.02), title="retrieval accuracy (dense attention)")
    acc_ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_checkpoint(
    model: Transformer, optimizer: torch.optim.Optimizer, out: Path, step: int, elapsed: float, args: dict
) -> None:
    save_model(model, out)
    build_tokenizer(out)
    state = {"optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed, "args": args}
    torch.save(state, out / f"{STATE_FILE}.tmp")
    (out / f"{STATE_FILE}.tmp").replace(out / STATE_FILE)


@dataclass
class Window:
    """Training statistics since the last log line."""

    loss: float = 0.0  # summed over targets
    hits: int = 0
    targets: int = 0
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, hits: int, targets: int, tokens: int) -> None:
        self.loss += loss * targets
        self.hits += hits
        self.targets += targets
        self.tokens += tokens


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("services/inference/checkpoints/retrieval-lm"))
    parser.add_argument("--resume-from", type=Path, help="a directory this script wrote; its run continues")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves the other cores free)")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="tokens per step; batch = this // length")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=250, help="also saves the checkpoint")
    parser.add_argument("--eval-lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--eval-prompts", type=int, default=20)
    parser.add_argument("--eval-pairs", type=int, default=256, help="key–value pairs per evaluation prompt")
    parser.add_argument("--final-lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--final-prompts", type=int, default=100)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--rope-theta", type=float, default=10_000_000.0)
    parser.add_argument(
        "--circuit",
        choices=["induction", "previous-token", "none"],
        default="induction",
        help="attention patterns built into the initial weights: both heads, the layer-0 one only, or none",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    if args.resume_from:
        model = load_model(args.resume_from).train()
        state = torch.load(args.resume_from / STATE_FILE, weights_only=False)
        start, elapsed = state["step"], state["elapsed_s"]
        log_path = args.resume_from / LOG_FILE
        if log_path.is_file():  # drop what was logged after the checkpoint, it is about to be redone
            records = [r for r in map(json.loads, log_path.read_text().splitlines()) if r["step"] <= start]
    else:
        model = build_model(model_config(args), args.seed, args.circuit)
        start, elapsed = 0, 0.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)
    if args.resume_from:
        optimizer.load_state_dict(state["optimizer"])
    params = sum(p.numel() for p in model.parameters())
    log(f"{params:,} parameters; {json.dumps(model.config.to_dict())}")
    (out / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    run_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}

    def record(entry: dict) -> None:
        records.append(entry)
        with (out / LOG_FILE).open("a") as f:
            f.write(json.dumps(entry) + "\n")

    tokens_seen = next((r["tokens"] for r in reversed(records) if "tokens" in r), 0)
    run_start = time.perf_counter()
    window = Window()
    for step in range(start, args.steps):
        shape = stage_shape(step, args.steps)
        rng = np.random.default_rng([args.seed, step])  # batches depend on the step only, so resuming is exact
        batch = training_batch(rng, shape, max(1, args.batch_tokens // shape.length))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        logits = supervised_logits(model, batch)
        targets = batch.targets[batch.targets != IGNORE]
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

        window.add(loss.item(), int((logits.argmax(-1) == targets).sum()), len(targets), batch.tokens.numel())
        tokens_seen += batch.tokens.numel()
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            entry = {
                "step": done,
                "loss": window.loss / window.targets,
                "train_accuracy": window.hits / window.targets,
                "lr": optimizer.param_groups[0]["lr"],
                "length": shape.length,
                "tokens": tokens_seen,
                "tokens_per_s": window.tokens / (time.perf_counter() - window.start),
                "elapsed_s": elapsed + time.perf_counter() - run_start,
            }
            record(entry)
            log(
                f"step {done:6d}  len {shape.length:5d}  loss {entry['loss']:.4f}  acc {entry['train_accuracy']:.3f}"
                f"  lr {entry['lr']:.2e}  {entry['tokens_per_s']:,.0f} tok/s  {entry['elapsed_s'] / 60:.1f} min"
            )
            window = Window()
        if done % args.eval_every == 0 or done == args.steps:
            accuracy = evaluate(model, args.eval_lengths, args.eval_prompts, args.seed + 1, args.eval_pairs)
            record({"step": done, "eval": {str(k): v for k, v in accuracy.items()}, "prompts": args.eval_prompts})
            log(f"step {done:6d}  eval " + "  ".join(f"{k}: {v:.2f}" for k, v in accuracy.items()))
            save_checkpoint(model, optimizer, out, done, elapsed + time.perf_counter() - run_start, run_args)
            plot_curve(records, out / CURVE_FILE)
            window = Window()  # evaluation time is not training throughput
    if args.final_prompts:
        accuracy = evaluate(model, args.final_lengths, args.final_prompts, args.seed + 2, args.eval_pairs)
        final = {"step": args.steps, "final": True, "eval": {str(k): v for k, v in accuracy.items()}}
        record({**final, "prompts": args.final_prompts, "elapsed_s": elapsed + time.perf_counter() - run_start})
        log("final eval " + "  ".join(f"{k}: {v:.3f}" for k, v in accuracy.items()))
        plot_curve(records, out / CURVE_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
