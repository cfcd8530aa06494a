import time, torch
from specnb import ModelSpec, load, autoregressive
prompt = "def fibonacci(n):\n    "
for cudnn in (True, False):
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    for dt in ("float32", "bfloat16", "float16"):
        m = load(ModelSpec("zoo:tiny-cloud", dtype=dt, device="cuda"))
        autoregressive(m, prompt, 4)
        for rep in range(2):
            torch.cuda.synchronize(); t0 = time.perf_counter()
            autoregressive(m, prompt, 64)
            torch.cuda.synchronize(); s = time.perf_counter() - t0
            print(f"cudnn_sdp={cudnn} {dt} rep{rep}: {64/s:.1f} tok/s", flush=True)
