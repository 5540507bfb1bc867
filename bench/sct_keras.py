"""Seconds per forward pass of SCT's Keras 2 models in inference.sct's torch reader, and their distance to Keras 3.

One input of each model's stored shape (a 48^3 patch for the lesion models, one 80x80 slice for the centerline
models), standard-normal as SCT's normalised intensities are; the median of --repeat timed passes after one
warm-up, with the process CPU time (wall time on shared cores is mostly other people's load; CPU time divided by
the threads is the floor of the uncontended wall time).
With keras installed (the test extra) it also prints the largest |torch - Keras 3| over the output and over the
pre-sigmoid logits, the same comparison tests/unit/test_sct_keras.py makes.

    .venv/bin/python bench/sct_keras.py [--models-dir ../shared/data/sct-models] [--threads 2] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = ("t2_ax_lesion", "t2s_lesion", "t2_ctr", "t2s_ctr")


def keras_differences(path: Path, x, tmp: Path) -> tuple[float, float] | None:  # type: ignore[no-untyped-def]
    """Largest |torch - Keras 3| on the output and on the logits, or None without keras."""
    os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError:
        return None
    import h5py
    import numpy as np
    import torch

    from inference.sct.keras_h5 import load_keras_h5

    source = path
    if path.stem.endswith("_ctr"):  # Keras 3 cannot run the file's Python 2 Lambda: z / temperature
        source = tmp / path.name
        shutil.copyfile(path, source)
        with h5py.File(source, "r+") as f:
            cfg = json.loads(f.attrs["model_config"])
            for layer in cfg["config"]["layers"]:
                if layer["class_name"] == "Lambda":
                    scale = 1.0 / layer["config"]["function"][2][0]
                    layer.update(class_name="Rescaling",
                                 config={"name": layer["config"]["name"], "scale": scale, "offset": 0.0})
            f.attrs["model_config"] = json.dumps(cfg)
    ref = keras.models.load_model(source, compile=False)
    two = keras.Model(ref.inputs, [ref.layers[-2].output, ref.layers[-1].output])
    want_logits, want = (np.asarray(t.detach().cpu()) for t in two(x, training=False))
    with torch.no_grad():
        got = load_keras_h5(path).intermediates(torch.from_numpy(x))
    return (float(np.abs(got[ref.layers[-1].name].numpy() - want).max()),
            float(np.abs(got[ref.layers[-2].name].numpy() - want_logits).max()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=REPO.parent / "shared" / "data" / "sct-models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    import numpy as np
    import torch

    from inference.sct.keras_h5 import load_keras_h5

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            path = args.models_dir / f"{name}.h5"
            if not path.is_file():
                print(f"{name}: {path} missing")
                continue
            model = load_keras_h5(path)
            shape = (1, *model.info.input_shape[1:])
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            times, cpu = [], []
            with torch.no_grad():
                model(torch.from_numpy(x))
                for _ in range(args.repeat):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    model(torch.from_numpy(x))
                    times.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - start_cpu)
            line = f"{name}: input {shape}, forward median {1000 * statistics.median(times):.0f} ms " \
                   f"(min {1000 * min(times):.0f} ms, CPU {1000 * statistics.median(cpu):.0f} ms)"
            diff = keras_differences(path, x, Path(tmp))
            if diff is not None:
                line += f", max |torch - keras3| output {diff[0]:.2g}, logits {diff[1]:.2g}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
