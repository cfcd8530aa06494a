"""One-off: why is plain eager bfloat16/float16 decoding ~3x slower than float32 on the GPU (tiny cloud)?"""
import time, torch
from specnb import ModelSpec, load, autoregressive
from torch.profiler import profile, ProfilerActivity
prompt = "def fibonacci(n):\n    "
for dt in ("float32", "bfloat16", "float16"):
    m = load(ModelSpec("zoo:tiny-cloud", dtype=dt, device="cuda"))
    autoregressive(m, prompt, 16)
    torch.cuda.synchronize(); t0 = time.perf_counter()
    g = autoregressive(m, prompt, 64)
    torch.cuda.synchronize(); dt_s = time.perf_counter() - t0
    print(f"{dt}: {64/dt_s:.1f} tok/s plain; attn impl {m.model.config._attn_implementation}", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        autoregressive(m, prompt, 8)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
