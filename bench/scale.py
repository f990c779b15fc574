"""How the batch jobs' cost grows with the work: jobs.stylize (local and on an S3 server) and jobs.generate over N
inputs, N = 1,000, 10,000, 100,000 (1,000,000 with --max), with a tiny generator so that the model is not what is
measured.

python bench/scale.py [--counts 1000,10000,100000] [--max] [--modes local,s3,generate] [--cache DIR] [--plan-only]
                      [--s3rver PATH]

Per N and mode it prints: planning (listing, tagging, manifest: everything before the first image moves), the run,
report + zip, images/s of the run, the driver's peak RSS, the manifest's size, and a rerun that finds the job
complete. The job (with its zip) and its rerun each run in their own process (a fresh driver, as a user would run
them, so each peak RSS is its own). Inputs are small JPEGs (the job resizes them to 256x256 anyway), made once into
--cache and reused; S3 inputs are uploaded to a moto server on 127.0.0.1 that the bench starts (or to s3rver with
--s3rver, several times faster: see bench/s3_server.py). Ratios to read: images/s at N against images/s at the
smallest N (flat per-image cost), (planning + report + zip) / run, and the RSS growth. --plan-only plans each job
twice (the first run, then a resumed one) and runs no model: the driver's planning cost and memory at N where
running N images would take hours (1,000,000); for a local folder also a rerun that finds one input changed
(refused, naming it).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULT = "SCALE-RESULT "


def tiny_generator(path: Path) -> None:
    import torch

    from gan.checkpoint import generator_checkpoint, to_bytes
    from gan.models.cyclegan import CycleGANConfig, build_generator
    torch.manual_seed(0)
    cfg = CycleGANConfig(ngf=2, n_blocks=0)
    path.write_bytes(to_bytes(generator_checkpoint("cyclegan", cfg, build_generator(cfg))))


def tiny_dcgan(path: Path) -> None:
    import torch

    from gan.checkpoint import generator_checkpoint, to_bytes
    from gan.models.dcgan import DCGANConfig, DCGANGenerator
    torch.manual_seed(0)
    cfg = DCGANConfig(image_size=64, ngf=2, nz=8)
    path.write_bytes(to_bytes(generator_checkpoint("dcgan", cfg, DCGANGenerator(cfg))))


def make_inputs(folder: Path, count: int) -> None:
    """`count` distinct 32x32 JPEGs (the same files on every run: made once)."""
    import io

    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    have = len(os.listdir(folder))
    rng = np.random.default_rng(have)
    for i in range(have, count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        (folder / f"photo-{i:07d}.jpg").write_bytes(buf.getvalue())


def upload(folder: Path, bucket: str, prefix: str, count: int) -> None:
    import boto3
    from concurrent.futures import ThreadPoolExecutor
    s3 = boto3.client("s3")
    names = sorted(os.listdir(folder))[:count]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: s3.put_object(Bucket=bucket, Key=f"{prefix}/{n}", Body=(folder / n).read_bytes()),
                      names))


def peak_rss_mib() -> float:
    """This process's peak RSS since it started: VmHWM. Not getrusage's ru_maxrss, which a process started by fork
    and exec inherits from its parent (the bench, holding the moto server's data, ran to 3 GB)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def sample_shared_peak() -> dict:
    """Start sampling this process's RssShmem (every 0.2 s): the pages of Ray's object store it has mapped, which
    count in its RSS but are the store's memory, shared, not the driver's own. The returned dict holds the peak."""
    import threading
    peak = {"mib": 0.0}

    def sample() -> None:
        while True:
            with open("/proc/self/status") as f:
                shm = next(int(line.split()[1]) for line in f if line.startswith("RssShmem:")) / 1024
            peak["mib"] = max(peak["mib"], shm)
            time.sleep(0.2)
    threading.Thread(target=sample, daemon=True).start()
    return peak


def one(mode: str, source: str, out: str, checkpoint: str, count: int) -> dict:
    """One job in this process with its zip, as `--zip` runs it (`run_zipped`, step by step); phases timed from the
    job's own steps: the zip is written during the run, and its phase is what is left after the report."""
    from gan.batch.engine import BatchOptions
    from gan.batch.generate import generate_job
    from gan.batch.stylize import stylize_job
    from gan.batch.submission import JobZip, record_zip
    from gan.io.storage import open_storage
    from gan.ray_runtime import ensure_ray, set_verbose
    set_verbose(False)
    shared = sample_shared_peak()
    ensure_ray()
    opts = BatchOptions(checkpoint=checkpoint, output=open_storage(out), batch_size=64, progress=False)
    t0 = time.perf_counter()
    job = generate_job(count, 0, opts) if mode == "generate" else stylize_job(source, opts)
    t_plan = time.perf_counter()
    assert job.resume() is None
    t_resume = time.perf_counter()
    earlier = job.earlier_outputs()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    with JobZip(f"{out}/../{Path(out).name}.zip" if not out.startswith("s3://") else f"{out}.zip",
                min_images=1, max_images=count) as z:
        job.execute(collect=z)
        t_run = time.perf_counter()
        after = resource.getrusage(resource.RUSAGE_SELF)  # the driver's own CPU through the run (the zip's part in it)
        run_cpu = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
        result = job.report()
        t_report = time.perf_counter()
        z.add_read_back(opts.output, earlier)
        z.finish(opts.output.uri)
    record_zip(opts.output, result, z.made())
    t_zip = time.perf_counter()
    rss = peak_rss_mib()  # the job's driver, as `--zip` runs it
    manifest = len(opts.output.read("_manifest.json"))
    return {"mode": mode, "n": count, "plan_s": t_resume - t0, "scan_s": t_plan - t0, "run_s": t_run - t_resume,
            "report_s": t_report - t_run, "zip_s": t_zip - t_report,
            "images_per_s": result.report["counts"]["written"] / (t_run - t_resume), "rss_mib": rss,
            "shared_mib": shared["mib"], "run_cpu_s": run_cpu,
            "manifest_mb": manifest / 1e6}


def rerun(mode: str, source: str, out: str, checkpoint: str, count: int) -> dict:
    """The same command again, in a fresh driver as a user would run it: it must find the job complete."""
    from gan.batch.engine import BatchOptions
    from gan.batch.generate import generate_job
    from gan.batch.stylize import stylize_job
    from gan.io.storage import open_storage
    t0 = time.perf_counter()
    opts = BatchOptions(checkpoint=checkpoint, output=open_storage(out), batch_size=64, progress=False)
    again = (generate_job(count, 0, opts) if mode == "generate" else stylize_job(source, opts)).resume()
    seconds = time.perf_counter() - t0
    assert again is not None and again.skipped_run, "the rerun did not find the job complete"
    return {"rerun_s": seconds, "rerun_rss_mib": peak_rss_mib()}


def plan_only(mode: str, source: str, out: str, checkpoint: str, count: int) -> dict:
    """Only the planning (list, tag, manifest) and the check against the folder, no model run: the driver's cost
    at N where running N images would take hours (--plan-only)."""
    from gan.batch.engine import BatchOptions
    from gan.batch.generate import generate_job
    from gan.batch.stylize import stylize_job
    from gan.io.storage import open_storage
    opts = BatchOptions(checkpoint=checkpoint, output=open_storage(out), batch_size=64, progress=False)
    t0 = time.perf_counter()
    job = generate_job(count, 0, opts) if mode == "generate" else stylize_job(source, opts)
    t_plan = time.perf_counter()
    assert job.resume() is None and len(job.todo) == count
    return {"plan_s": time.perf_counter() - t0, "scan_s": t_plan - t0,
            "rss_mib": peak_rss_mib(),
            "manifest_mb": len(opts.output.read("_manifest.json")) / 1e6}


def refused(mode: str, source: str, out: str, checkpoint: str, count: int) -> dict:
    """A rerun that finds one input's bytes changed: planned, then refused, naming it (--plan-only, local)."""
    from gan.batch.engine import BatchOptions, JobMismatchError
    from gan.batch.stylize import stylize_job
    from gan.io.storage import open_storage
    opts = BatchOptions(checkpoint=checkpoint, output=open_storage(out), batch_size=64, progress=False)
    t0 = time.perf_counter()
    job = stylize_job(source, opts)
    t_plan = time.perf_counter()
    try:
        job.resume()
    except JobMismatchError as e:
        assert "1 input changed" in str(e), e
    else:
        raise AssertionError("a changed input was not seen")
    return {"plan_s": t_plan - t0, "refuse_s": time.perf_counter() - t_plan, "rss_mib": peak_rss_mib()}


def measure(mode: str, source: str, out: str, checkpoint: str, n: int, env: dict) -> dict | None:
    """The job, then its rerun, each in a fresh process; None (and its error printed) when one failed."""
    first = _step("--one", mode, source, out, checkpoint, n, env)
    again = _step("--rerun", mode, source, out, checkpoint, n, env) if first else None
    return {**first, **again} if again else None


def _changed_rerun(inputs: Path, source: str, out: str, checkpoint: str, n: int, env: dict) -> dict | None:
    """The middle input's link replaced by a copy with one byte changed, the job planned again (refused), the link
    put back: the cache itself is never touched."""
    link = inputs / sorted(os.listdir(inputs))[n // 2]
    target = os.readlink(link)
    data = bytearray(Path(target).read_bytes())
    data[-3] ^= 1
    link.unlink()
    link.write_bytes(bytes(data))
    try:
        return _step("--refused", "local", source, out, checkpoint, n, env)
    finally:
        link.unlink()
        os.symlink(target, link)


def _step(step: str, mode: str, source: str, out: str, checkpoint: str, n: int, env: dict) -> dict | None:
    """One step in a fresh process: its result, or None (and its error printed)."""
    done = subprocess.run([sys.executable, __file__, step, mode, source, out, checkpoint, str(n)],
                          env=env, capture_output=True, text=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(RESULT)), None)
    if line is None:
        print(f"{mode} N={n} {step}: failed\n{done.stderr[-3000:]}")
        return None
    return json.loads(line[len(RESULT):])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="1000,10000,100000")
    p.add_argument("--max", action="store_true", help="add N = 1,000,000")
    p.add_argument("--modes", default="local,s3,generate")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "gan-scale-inputs")
    p.add_argument("--one", nargs=5, metavar=("MODE", "SOURCE", "OUT", "CHECKPOINT", "N"), help=argparse.SUPPRESS)
    p.add_argument("--rerun", nargs=5, metavar=("MODE", "SOURCE", "OUT", "CHECKPOINT", "N"), help=argparse.SUPPRESS)
    p.add_argument("--plan-only", action="store_true",
                   help="plan each job twice (the first run, then a resumed run), no model run: the driver's cost")
    p.add_argument("--plan", nargs=5, metavar=("MODE", "SOURCE", "OUT", "CHECKPOINT", "N"), help=argparse.SUPPRESS)
    p.add_argument("--s3rver", help="s3rver's executable (npm install s3rver@3.7.1): the S3 rows on it, not moto")
    p.add_argument("--refused", nargs=5, metavar=("MODE", "SOURCE", "OUT", "CHECKPOINT", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    step = {"one": one, "rerun": rerun, "plan": plan_only, "refused": refused}
    for name, fn in step.items():
        if getattr(args, name):
            mode, source, out, checkpoint, n = getattr(args, name)
            print(RESULT + json.dumps(fn(mode, source, out, checkpoint, int(n))), flush=True)
            return 0
    counts = [int(c) for c in args.counts.split(",")] + ([1_000_000] if args.max else [])
    modes = args.modes.split(",")
    work = Path(tempfile.mkdtemp(prefix="gan-scale-"))
    tiny_generator(work / "g.pt")
    tiny_dcgan(work / "d.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    server = None
    if "s3" in modes:
        from bench.s3_server import start_s3_server
        server, aws = start_s3_server("scale", args.s3rver)
        env.update(aws)
    rows = []
    for n in counts:
        make_inputs(args.cache / "photos", n)
        inputs = work / f"in-{n}"
        inputs.mkdir()
        for name in sorted(os.listdir(args.cache / "photos"))[:n]:  # this N's inputs: links, not copies
            os.symlink(args.cache / "photos" / name, inputs / name)
        for mode in modes:
            if mode == "s3":
                upload(args.cache / "photos", "scale", f"in-{n}", n)
                source, out = f"s3://scale/in-{n}", f"s3://scale/out-{n}"
            else:
                source, out = str(inputs), str(work / f"out-{mode}-{n}")
            checkpoint = str(work / ("d.pt" if mode == "generate" else "g.pt"))
            if args.plan_only:
                plans = [_step("--plan", mode, source, out, checkpoint, n, env) for _ in ("first", "resumed")]
                changed = _changed_rerun(inputs, source, out, checkpoint, n, env) if mode == "local" else None
                if None not in plans:
                    print(f"{mode:8s} N={n:>9,}: plan only: first {plans[0]['plan_s']:7.2f} s (scan "
                          f"{plans[0]['scan_s']:.2f}) RSS {plans[0]['rss_mib']:.0f} MiB; resumed "
                          f"{plans[1]['plan_s']:7.2f} s (scan {plans[1]['scan_s']:.2f}) RSS {plans[1]['rss_mib']:.0f} "
                          f"MiB; manifest {plans[1]['manifest_mb']:.2f} MB" + (
                              f"; one input changed: plan {changed['plan_s']:.2f} s, refused in "
                              f"{changed['refuse_s']:.2f} s, RSS {changed['rss_mib']:.0f} MiB" if changed else ""),
                          flush=True)
                continue
            r = measure(mode, source, out, checkpoint, n, env)
            if r is None:
                continue
            rows.append(r)
            overhead = (r["plan_s"] + r["report_s"] + r["zip_s"]) / r["run_s"]
            print(f"{mode:8s} N={n:>9,}: plan {r['plan_s']:7.2f} s (scan {r['scan_s']:.2f})  run {r['run_s']:8.1f} s  "
                  f"(driver CPU {r['run_cpu_s']:.1f} s)  report {r['report_s']:5.2f} s  zip {r['zip_s']:6.2f} s  "
                  f"{r['images_per_s']:7.1f} images/s  "
                  f"overhead {overhead:6.1%}  RSS {r['rss_mib']:7.0f} MiB (object store {r['shared_mib']:.0f})  "
                  f"manifest {r['manifest_mb']:6.2f} MB  "
                  f"rerun {r['rerun_s']:6.2f} s (RSS {r['rerun_rss_mib']:.0f} MiB)", flush=True)
    print("\n| mode | N | planning s | run s | report + zip s | images/s | vs smallest N | overhead | driver RSS MiB "
          "| of it object store | manifest MB | complete rerun s | rerun RSS MiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["mode"] == r["mode"])
        print(f"| {r['mode']} | {r['n']:,} | {r['plan_s']:.2f} | {r['run_s']:.1f} | {r['report_s'] + r['zip_s']:.2f} | "
              f"{r['images_per_s']:.1f} | {r['images_per_s'] / base['images_per_s']:.2f}x | "
              f"{(r['plan_s'] + r['report_s'] + r['zip_s']) / r['run_s']:.1%} | {r['rss_mib']:.0f} | "
              f"{r['shared_mib']:.0f} | {r['manifest_mb']:.2f} | {r['rerun_s']:.2f} | {r['rerun_rss_mib']:.0f} |")
    if server is not None:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
