"""The prepared GPU check: Triton kernels against their references, tree attention against SDPA, one table.

Run by ``scripts/gpu_check.sh`` on a CUDA machine (about two minutes on one GPU). Four parts:

1. **kernels**: the ``scar::tree_attention`` and ``scar::dense_mask`` ops on CUDA (the Triton kernels)
   against the torch references, over dtypes, grouped-query heads, a cached prefix and odd lengths;
2. **exactness**: a random-weight GPT-2 and Llama reward model on the GPU, the ``trie`` backend with the
   tree-attention kernel, with FlexAttention and with a dense mask against ``loop`` (plain deletion), in fp32
   and bf16;
3. **speed**: tree attention against ``scaled_dot_product_attention`` with the pack's dense additive mask
   and against compiled FlexAttention (its ``BlockMask`` from ``scar_kernels.flex``'s O(N) builder and from
   ``create_block_mask``, build times reported) on permutation-sampling packs (prompt 256, response 64, 16
   players; 8, 32 and 64 permutations), CUDA events, median of repeats; with the fraction of 64x64 tiles
   the kernel's block skipping leaves out;
4. **auto**: what ``attention="auto"`` picks on this GPU (:func:`scar_kernels.ops.fastest_tree_attention`
   for two head layouts, bf16 and fp32).

Exit status 1 when a check fails. ``--dry-run`` runs the same code on the CPU under the Triton interpreter
at toy sizes (no timings), to check the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's packages, uninstalled


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, toy sizes, no timings")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats per speed row (median reported)")
    return p.parse_args()


ARGS = parse_args()
if ARGS.dry_run:
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported

import torch  # noqa: E402

from scar_kernels import flex, ops  # noqa: E402
from scar_kernels.layout import additive_mask  # noqa: E402
from scar_kernels.tree_attention import block_skip_stats, tree_attention_reference  # noqa: E402

DEVICE = "cpu" if ARGS.dry_run else "cuda"
# The ops' CUDA implementations (the Triton kernels): through the ops on the GPU; called directly on CPU
# tensors in a dry run, where the interpreter runs them.
TREE_ATTENTION = ops._tree_attention_cuda if ARGS.dry_run else ops.tree_attention
DENSE_MASK = ops._dense_mask_cuda if ARGS.dry_run else (lambda h, p, dt: ops.dense_mask(h, p, dtype=dt))
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
if ARGS.dry_run:
    flex.COMPILE_BY_DEVICE["cpu"] = False  # compiling FlexAttention on the CPU takes minutes; the GPU run compiles
rows: list[tuple[str, str, str, str]] = []  # (part, case, result, verdict)
failed = False


def record(part: str, case: str, result: str, ok: bool | None) -> None:
    global failed
    verdict = "-" if ok is None else ("ok" if ok else "FAIL")
    failed |= ok is False
    rows.append((part, case, result, verdict))
    print(f"{part:10s} {case:48s} {result:40s} {verdict}", flush=True)


def random_forest(n: int, gen: torch.Generator) -> torch.Tensor:
    """Horizon of a random preorder forest of ``n`` tokens."""
    horizon = torch.empty(n, dtype=torch.int32)

    def fill(start: int, end: int) -> None:
        pos = start
        while pos < end:
            length = int(torch.randint(1, min(4, end - pos) + 1, (1,), generator=gen))
            sub_end = int(torch.randint(pos + length, end + 1, (1,), generator=gen))
            horizon[pos : pos + length] = sub_end
            fill(pos + length, sub_end)
            pos = sub_end

    fill(0, n)
    return horizon


def check_kernels() -> None:
    gen = torch.Generator().manual_seed(0)
    cases = [(4, 4, 37, 64, 0), (8, 2, 200, 64, 17), (4, 1, 130, 128, 5), (2, 2, 16, 16, 0)]
    if ARGS.dry_run:
        cases = [(2, 1, 24, 16, 3), (2, 2, 40, 32, 0)]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for h, hkv, n, d, p in cases:
            mk = lambda *s, dtype=dtype: torch.randn(*s, generator=gen).to(dtype).to(DEVICE)
            q, k, v = mk(h, n, d), mk(hkv, n, d), mk(hkv, n, d)
            pk, pv = (mk(hkv, p, d), mk(hkv, p, d)) if p else (None, None)
            horizon = random_forest(n, gen).to(DEVICE)
            got = TREE_ATTENTION(q, k, v, horizon, d**-0.5, pk, pv)
            to32 = lambda t: None if t is None else t.float()
            want = tree_attention_reference(q.float(), k.float(), v.float(), horizon, d**-0.5, to32(pk), to32(pv))
            err = float((got.float() - want).abs().max())
            record("kernels", f"tree_attention {str(dtype)[6:]} H{h}/{hkv} N{n} D{d} P{p}", f"max abs err {err:.2e}",
                   err <= TOL[dtype])
    horizon = random_forest(300 if not ARGS.dry_run else 40, gen).to(DEVICE)
    for dtype in (torch.float32, torch.bfloat16):
        same = torch.equal(DENSE_MASK(horizon, 7, dtype), additive_mask(horizon, 7, dtype=dtype))
        record("kernels", f"dense_mask {str(dtype)[6:]}", "equal to reference" if same else "differs", same)
    record("kernels", "implementations on this device",
           ", ".join(f"{op}={ops.implementation(op, DEVICE)}" for op in ops.OPS), None)


def check_exactness() -> None:
    import transformers as tf

    from scar.scoring import CoalitionScorer

    tf.logging.set_verbosity_error()
    configs = {
        "gpt2": tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=512, pad_token_id=0),
        "llama": tf.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, pad_token_id=0),
    }
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 512, (40,), generator=gen).tolist()
    response = torch.randint(3, 512, (24,), generator=gen).tolist()
    players = [(i, i + 3) for i in range(0, 24, 3)]
    coalitions = torch.rand(30, len(players), generator=gen) < 0.5
    for name, cfg in configs.items():
        cfg.num_labels = 1
        torch.manual_seed(0)
        model = tf.AutoModelForSequenceClassification.from_config(cfg).eval()
        for dtype in (torch.float32, torch.bfloat16):
            model = model.to(device=DEVICE, dtype=dtype)
            loop = CoalitionScorer(model, backend="loop").score(prompt, response, players, coalitions, [2])
            for attention in ("kernel", "flex", "mask"):
                try:
                    scorer = CoalitionScorer(model, backend="trie", attention=attention, max_tokens_per_pass=128)
                except ValueError as err:
                    record("exactness", f"{name} {str(dtype)[6:]} trie/{attention}", f"refused: {err}"[:40], None)
                    continue
                got = scorer.score(prompt, response, players, coalitions, [2])
                err = float((got - loop).abs().max())
                tol = 1e-4 if dtype == torch.float32 else 5e-2
                record("exactness", f"{name} {str(dtype)[6:]} trie/{attention} vs loop",
                       f"max abs diff {err:.2e} ({scorer.stats.passes} passes)", err <= tol)


def permutation_pack(n_perms: int) -> torch.Tensor:
    """The horizon of one response's permutation-sampling pack: prompt 256, response 64, 16 players."""
    return ops.permutation_pack(16, n_perms // 2, prompt=256, response=64, suffix=1, cached=False).horizon


def time_cuda(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def check_speed() -> None:
    heads, dim, dtype = 16, 64, torch.bfloat16
    for n_perms in (8, 32, 64):
        horizon = permutation_pack(n_perms)
        n = int(horizon.numel())
        skip = block_skip_stats(horizon).skipped_vs_dense
        if ARGS.dry_run:
            record("speed", f"{n_perms} permutations: N={n}", f"{skip:.1%} of dense tiles skipped (no timing)", None)
            partial, full = flex.tree_block_tables(horizon)
            record("speed", f"{n_perms} permutations: flex tiles", f"{int(partial.sum())} partial, "
                   f"{int(full.sum())} full of {partial.numel()}", None)
            continue
        gen = torch.Generator(device="cuda").manual_seed(n)
        q, k, v = (torch.randn(heads, n, dim, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
        hz = horizon.to("cuda")
        mask = additive_mask(hz, dtype=dtype)
        tree_ms = time_cuda(functools.partial(ops.tree_attention, q, k, v, hz), ARGS.repeats)
        sdpa_ms = time_cuda(functools.partial(torch.nn.functional.scaled_dot_product_attention,
                                              q[None], k[None], v[None], attn_mask=mask[None, None]), ARGS.repeats)
        out = ops.tree_attention(q, k, v, hz).float()
        ref = torch.nn.functional.scaled_dot_product_attention(q[None].float(), k[None].float(), v[None].float(),
                                                               attn_mask=mask[None, None].float())[0]
        err = float((out - ref).abs().max())
        record("speed", f"{n_perms} perms: N={n}, H={heads}, D={dim}, bf16",
               f"tree {tree_ms:.3f} ms, SDPA+mask {sdpa_ms:.3f} ms ({sdpa_ms / tree_ms:.1f}x)", err <= 2e-2)
        record("speed", f"{n_perms} perms: tiles skipped / mask MiB",
               f"{skip:.1%} / {mask.numel() * mask.element_size() / 2**20:.0f} MiB", None)
        try:
            check_flex_speed(q, k, v, hz, tree_ms)
        except Exception as err:  # FlexAttention failing must not hide the other speed rows
            record("speed", f"N={n}: FlexAttention", f"crashed: {type(err).__name__}: {err}"[:200], False)


def check_flex_speed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, horizon: torch.Tensor, tree_ms: float) -> None:
    """Compiled FlexAttention on the same pack: mask build times (O(N) builder, create_block_mask) and attention."""
    from torch.nn.attention.flex_attention import create_block_mask

    n = int(horizon.numel())
    reason = flex.flex_unavailable_reason("cuda")
    if reason is not None:
        record("speed", f"N={n}: FlexAttention", f"unavailable: {reason}"[:60], None)
        return

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx < horizon[kv_idx])

    builder_ms = time_cuda(lambda: ops.flex_block_mask(horizon), 5)
    create_ms = time_cuda(lambda: create_block_mask(mask_mod, None, None, n, n, device="cuda"), 5)
    block_mask = ops.flex_block_mask(horizon)
    start = time.perf_counter()
    out = ops.flex_tree_attention(q, k, v, horizon, block_mask=block_mask)
    torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    flex_ms = time_cuda(lambda: ops.flex_tree_attention(q, k, v, horizon, block_mask=block_mask), ARGS.repeats)
    err = float((out.float() - ops.tree_attention(q, k, v, horizon).float()).abs().max())
    record("speed", f"N={n}: flex (O(N) mask) vs Triton tree",
           f"flex {flex_ms:.3f} ms, tree {tree_ms:.3f} ms ({flex_ms / tree_ms:.2f}x)", err <= 2e-2)
    record("speed", f"N={n}: BlockMask build, first flex call",
           f"builder {builder_ms:.2f} ms, create_block_mask {create_ms:.2f} ms, first {first_s:.1f} s", None)


def check_auto() -> None:
    """What ``attention="auto"`` runs on this device: the kernel or FlexAttention, timed as the scorer times it."""
    layouts = ((16, 16, 64), (32, 8, 128))
    for dtype in (torch.bfloat16, torch.float32):
        for heads, kv_heads, dim in layouts:
            kwargs = {}
            if ARGS.dry_run:  # a toy pack; eager FlexAttention on the CPU
                kwargs = dict(horizon=ops.permutation_pack(6, 2, prompt=9, response=12).horizon, prefix_len=8)
            choice = ops.fastest_tree_attention(DEVICE, dtype, heads, kv_heads, dim, **kwargs)
            flex_ms = f"{choice.flex_ms:.3f} ms" if choice.flex_ms is not None else f"not timed: {choice.reason}"[:80]
            record("auto", f"H={heads}, Hkv={kv_heads}, D={dim}, {str(dtype)[6:]}, N={choice.n_tokens}",
                   f"kernel {choice.kernel_ms:.3f} ms, flex {flex_ms} -> {choice.choice}", None)


def main() -> int:
    if not ARGS.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --dry-run to check the script on the CPU)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    where = "CPU, Triton interpreter (dry run)" if ARGS.dry_run else torch.cuda.get_device_name()
    print(f"gpu_check on {where}; torch {torch.__version__}", flush=True)
    for part in (check_kernels, check_exactness, check_speed, check_auto):
        try:
            part()
        except Exception as err:  # a crash is a failed check, reported with the others
            record(part.__name__, "crashed", f"{type(err).__name__}: {err}"[:200], False)
    print("\n| part | case | result | verdict |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n{sum(r[3] == 'ok' for r in rows)} ok, {sum(r[3] == 'FAIL' for r in rows)} failed, "
          f"{time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
