"""Peak memory and speed of infer.py's streaming on videos of growing length (CPU or GPU).

    OMP_NUM_THREADS=2 python benchmarks/bench_infer.py [--minutes 1 4] [--size 240 320] [--fps 30]
        [--chunk-frames 256] [--device cpu] [--workdir /tmp/bench_infer]

Writes one synthetic mp4 per length (a moving gradient, H.264) and a random-weight tiny
X-CLIP checkpoint (T=4, FRAME_INTERVAL 8, 64 px), then scores every video in a fresh
process (``python infer.py ...``) and prints that process's peak resident memory
(``ru_maxrss``) and wall time. Streaming means the peak stays flat as the video grows; the
decoded whole video would need N * H * W * 3 bytes. Numbers go into docs/INFERENCE.md.
Not a test.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_video(path, frames, height, width, fps):
    import av

    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    rows = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for t in range(frames):
            image = np.concatenate([(ramp + 3 * t) % 256 + 0 * rows, rows + 0 * ramp,
                                    (ramp + rows + t) % 256], axis=2).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_checkpoint(folder):
    from models import xclip
    from training.checkpoint import save_checkpoint
    from utils.config import get_default_config

    cfg = get_default_config()
    cfg.MODEL.ARCH, cfg.DATA.INPUT_SIZE, cfg.DATA.NUM_FRAMES, cfg.DATA.FRAME_INTERVAL = "tiny", 64, 4, 8
    cfg.DATA.LABEL_LIST = str(ROOT / "configs" / "labels_2.csv")
    model, _, _ = xclip.load(None, "tiny", T=4)
    return save_checkpoint(str(folder), "best", model, None, None, 0, 0, 0.0, cfg, extra={"score_threshold": 0.5})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 4])
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"))
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--chunk-frames", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default="/tmp/bench_infer")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    weights = write_checkpoint(work / "run")
    height, width = args.size
    print(f"{'minutes':>7} {'frames':>7} {'whole video MB':>14} {'peak RSS MB':>11} {'wall s':>7} {'frames/s':>8}")
    for minutes in args.minutes:
        frames = int(minutes * 60 * args.fps)
        video = work / f"video_{frames}.mp4"
        if not video.is_file():
            write_video(video, frames, height, width, args.fps)
        probe = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; "
                 "code = 0\ntry:\n    runpy.run_path('infer.py', run_name='__main__')\n"
                 "except SystemExit as e:\n    code = e.code\n"
                 "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
        started = time.time()
        done = subprocess.run([sys.executable, "-c", probe, "infer.py", "--pretrained", weights, str(video),
                               "--output", str(work / f"out_{frames}"), "--chunk-frames", str(args.chunk_frames),
                               "--device", args.device, "--no-progress"],
                              cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.time() - started
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("MAXRSS")]
        if done.returncode != 0 or not lines:
            print(done.stdout[-2000:], done.stderr[-2000:])
            raise SystemExit(f"infer.py failed on {video}")
        peak_mb = int(lines[-1].split()[1]) / 1024
        whole_mb = frames * height * width * 3 / 2**20
        print(f"{minutes:>7g} {frames:>7d} {whole_mb:>14.0f} {peak_mb:>11.0f} {wall:>7.1f} {frames / wall:>8.0f}")


if __name__ == "__main__":
    main()
