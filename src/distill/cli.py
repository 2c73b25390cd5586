"""Command line: a thin layer over the Python API and the `run` pipeline.

    distill run [CONFIG] [key=value ...] [--resume] [--quiet]
    distill train-teacher [CONFIG] [key=value ...]
    distill eval [CONFIG] [key=value ...] [--json]
    distill bench [CONFIG] [key=value ...] [--json]
    distill report RUN_DIR
    distill export [CONFIG] student.checkpoint=S --format onnx|safetensors|hf --out PATH [--check] [--int8] [--json]
    distill export MODEL_DIR --format gguf [--type q8_0] --out FILE.gguf [--check TEXT_FILE] [--teacher T]
    distill search SEARCH.yaml [key=value ...] [--resume]
    distill prune [CONFIG] teacher.checkpoint=T --reduction 0.8 [--recover kd|ce|none] --out DIR
    distill quantize [CONFIG] student.checkpoint=S --method dynamic|static [--backend x86] [--out PATH] [--json]
    distill monitor [CONFIG] [key=value ...] --inputs FILE|- [--sample F] [--window N] [--json] ...
    distill lm [CONFIG] [key=value ...] [--resume] [--quiet]
    distill lm-cache [CONFIG] [key=value ...]
    distill serve MODEL_DIR [--host H] [--port P] [--api-key-env NAME | --api-key-file PATH]
    distill generate [CONFIG] [key=value ...] --output OUT.jsonl [--prompts IN.jsonl]
    distill textkd [CONFIG] [key=value ...] [--resume] [--quiet]
    distill task [CONFIG] [key=value ...] [--resume] [--quiet]
    distill config JOB [CONFIG] [key=value ...] [--json]
    distill --version
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from distill.recipes.options import export_options, monitor_options, quantize_options, serve_options
from distill.core.errors import DistillError
from distill.recipes.commands import BUILT_IN, EXAMPLES
from distill.recipes.smoke import SMOKE


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # argparse stops filling a positional list at the first flag (`run --quiet a=1` would reject a=1),
    # so overrides given after a flag are collected here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "args") or any(a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.args += extra
    try:
        code = args.func(args)
        if _smoke(args):
            print("Smoke budget: every stage ran on a few steps; these numbers are no verdict.")
        return code
    except DistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished epochs are checkpointed; continue with --resume", file=sys.stderr)
        return 130
    finally:
        close_process_group()


def close_process_group() -> None:
    """Under torchrun / accelerate launch, end the process group before the interpreter exits: gloo's
    threads left running at exit abort the process now and then ("terminate called without an
    active exception")."""
    dist = sys.modules.get("torch.distributed")  # never imported here: a command without torch stays light
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option with a default says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    from distill import __version__

    p = argparse.ArgumentParser(prog="distill", description="Knowledge distillation: teacher → student.")
    p.add_argument("--version", action="version", version=f"distill {__version__}")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, func: Any, help: str, with_config: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=textwrap.fill(help, 100),
                           epilog=f"example:\n  {EXAMPLES[name]}",
                           formatter_class=_Help)
        if with_config:
            default = BUILT_IN.get(name, BUILT_IN["run"]).replace("%", "%%")  # help text is %-formatted
            c.add_argument("args", nargs="*", metavar="[CONFIG] key=value",
                           help=f"a YAML config (default: {default}) and key=value overrides")
            c.add_argument("--quiet", action="store_true", help="no progress bars")
        if name in SMOKE:
            c.add_argument("--smoke", action="store_true", help="a smoke budget: every stage in under 2 minutes "
                           "on 2 CPU cores, in a run named NAME-smoke (`distill config JOB --smoke` lists it)")
        if name in ("run", "train-teacher", "lm", "textkd", "task"):
            c.add_argument("--keep-state", action="store_true", help="keep each finished stage's resumable "
                           "training state (last.safetensors: optimizer, RNG); by default only weights and "
                           "metrics are kept")
        c.set_defaults(func=func, command=name)
        return c

    command("run", _run, "Train (or load) the teacher, train a baseline and a distilled student, "
            "evaluate and write a report.").add_argument(
        "--resume", action="store_true", help="continue an interrupted run in the same directory")
    command("train-teacher", _train_teacher, "Train the teacher alone and save its weights.")
    command("eval", _eval, "Evaluate teacher and student checkpoints on the test split.").add_argument(
        "--json", action="store_true", help="print JSON instead of a table")
    command("bench", _bench, "Measure size, latency, throughput and memory of teacher and student."
            ).add_argument("--json", action="store_true", help="print JSON instead of a table")
    command("lm", _lm, "Distil a causal language model (default: SmolLM2-135M → 1-layer student on "
            "the KJV Bible): CE baseline, distilled student, evaluation, report.").add_argument(
        "--resume", action="store_true", help="continue an interrupted run in the same directory")
    command("lm-cache", _lm_cache, "Build (or verify and complete) the top-k teacher cache of an LM config.")
    exp = command("export", _export, "Export a trained checkpoint as ONNX, safetensors or a Hugging Face "
                  "model directory (--check compares the export with PyTorch on the test split), or a "
                  "causal-LM student's model directory as GGUF (--format gguf).")
    export_options(exp)
    mon = command("monitor", _monitor, "Run teacher and student on a sample of production inputs and report "
                  "agreement and KL per window; or (--recorded) compare a served LM's answers with a "
                  "teacher's recorded ones. Exit 3 when a window crosses a threshold.")
    monitor_options(mon)
    command("search", _search, "Train candidate students over a space of sizes and settings, draw the "
            "Pareto front and recommend the smallest that meets the requirements.").add_argument(
        "--resume", action="store_true", help="continue an interrupted search")
    prune = command("prune", _prune, "Prune the config's trained teacher (structured: fewer channels and "
                    "neurons), recover it by distillation from the original, and save it.")
    prune.add_argument("--reduction", type=float, required=True, help="fraction of parameters to remove, e.g. 0.8")
    prune.add_argument("--recover", choices=["kd", "ce", "none"], default="kd",
                       help="recovery training: distillation from the original (default), labels only, or none")
    prune.add_argument("--out", type=Path, required=True, help="directory for model.safetensors and prune.json")
    qz = command("quantize", _quantize, "Quantize a trained student to int8 and compare it with fp32 on the "
                 "test split: accuracy, size, CPU latency and throughput.")
    quantize_options(qz)
    rep = command("report", _report, "Re-render report.md and plots of a finished run.", with_config=False)
    rep.add_argument("run_dir", type=Path)
    gen = command("generate", _generate, "Ask a teacher (local model or OpenAI-compatible endpoint) to answer "
                  "prompts; responses are appended to a JSONL file, and a re-run continues where it stopped.")
    gen.add_argument("--output", type=Path, required=True, help="the JSONL file to write (and resume)")
    gen.add_argument("--prompts", type=Path, help="JSONL prompts: rows with `messages`, or fields for "
                     "prompt.template (default: the config's labelled dataset)")
    gen.add_argument("--split", choices=["train", "eval"], default="train",
                     help="with the config's dataset: which split to prompt (default: train)")
    command("textkd", _textkd, "Distil from teacher-generated text (default: BBC News, SmolLM2 rationales "
            "over HTTP): label-only, sequence-level and step-by-step students, scored against the teacher."
            ).add_argument("--resume", action="store_true", help="continue an interrupted run")
    command("task", _task, "Teach a student a task from prompts: answer SFT, sequence-level KD and on-policy "
            "distillation (the student answers, the teacher scores every token), judged by held-out task success."
            ).add_argument("--resume", action="store_true", help="continue an interrupted run")
    cfg = command("config", _settings, "Print every setting of a job (run, lm, textkd, task, search): its key, the "
                  "value the given config (default: the built-in job) runs with, its type and meaning.",
                  with_config=False)
    cfg.add_argument("job", metavar="JOB", choices=["run", "lm", "textkd", "task", "search"])
    cfg.add_argument("args", nargs="*", metavar="[CONFIG] key=value", help="a YAML config and key=value overrides")
    cfg.add_argument("--json", action="store_true", help="print JSON: one object per setting")
    cfg.add_argument("--smoke", action="store_true", help="with the job's smoke budget applied, as `--smoke` runs it")
    srv = command("serve", _serve, "Serve a causal LM (directory, hub id or builtin:NAME) over an "
                  "OpenAI-compatible API (chat and text completions, streaming, continuous batching).",
                  with_config=False)
    serve_options(srv)
    return p


def _monitor_answers(args: argparse.Namespace) -> int:
    from distill.eval.answers import monitor_endpoint

    if args.args or args.inputs or not args.endpoint:
        raise DistillError("--recorded JSONL takes --endpoint URL (the served student) and no config, "
                           "overrides or --inputs.")
    return monitor_endpoint(args.endpoint, args.endpoint_model, args.recorded, sample_fraction=args.sample,
                            window=args.window, min_f1=args.min_f1, max_tokens=args.max_tokens, seed=args.seed,
                            as_json=args.json)


def _search(args: argparse.Namespace) -> int:
    from distill.recipes.search import load_search_config, run_search
    from distill.recipes.smoke import search_smoke, smoke_name, smoke_overrides

    if not args.args or "=" in args.args[0]:
        raise DistillError("distill search needs a search config first, e.g. configs/search_fmnist.yaml.")
    cfg = load_search_config(args.args[0], smoke_overrides("search", args.args[1:]) if _smoke(args) else args.args[1:])
    if _smoke(args):
        cfg = cfg.model_copy(update={"overrides": search_smoke(cfg.overrides)})
    if args.smoke and not any(a.startswith("name=") for a in args.args[1:]):
        cfg = cfg.model_copy(update={"name": smoke_name(cfg.name)})
    root = run_search(cfg, resume=args.resume)
    report = json.loads((root / "search.json").read_text())
    best = report["recommended"]
    print(f"{root / 'search.md'}: " + (f"recommended {best['name']} ({best['values']})" if best else
                                       f"no candidate meets the requirements (shortfalls: {report['unmet']})"))
    return 0


def _prune(args: argparse.Namespace) -> int:
    from distill.recipes.compress import prune_and_recover

    summary = prune_and_recover(_config(args), args.reduction, args.recover, args.out)
    print(json.dumps(summary, indent=2))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from distill.recipes.textkd.config import load_textkd_config
    from distill.recipes.textkd.pipeline import open_teacher
    from distill.recipes.textkd.sampling import prompts_for
    from distill.teachers.generate import generate
    from distill.teachers.text import Sampling

    cfg = _config(args, load_textkd_config)
    rows, template = prompts_for(cfg, args.prompts, args.split)
    with open_teacher(cfg.teacher) as teacher:
        stats = generate(teacher, rows, args.output, sampling=Sampling(**cfg.sampling.model_dump()),
                         template=template, concurrency=cfg.concurrency, quiet=cfg.quiet)
    print(f"{args.output}: {stats.already_done + stats.generated // cfg.sampling.n} of {stats.prompts} prompts "
          f"done ({stats.generated} responses this run, {stats.requests_per_s:.2f} requests/s)")
    return 0


def _textkd(args: argparse.Namespace) -> int:
    from distill.recipes.textkd.config import load_textkd_config
    from distill.recipes.textkd.pipeline import run_textkd

    started = time.perf_counter()
    return _reported(run_textkd(_config(args, load_textkd_config), resume=args.resume), started)


def _task(args: argparse.Namespace) -> int:
    from distill.recipes.task.config import load_task_config
    from distill.recipes.task.pipeline import run_task

    started = time.perf_counter()
    return _reported(run_task(_config(args, load_task_config), resume=args.resume), started)


def _settings(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from distill.recipes.settings import job_config, render, settings
    from distill.recipes.smoke import smoke_overrides

    files = [a for a in args.args if "=" not in a]
    if len(files) > 1:
        raise DistillError(f"Expected at most one config file, got {files}; overrides look like key=value.")
    overrides = [a for a in args.args if "=" in a]
    source = files[0] if files else None
    cfg = job_config(args.job, source, overrides)
    rows = settings(job_config(args.job, source, smoke_overrides(args.job, overrides, cfg)) if args.smoke else cfg)
    print(json.dumps([asdict(r) for r in rows], indent=1) if args.json else render(rows, args.job))
    return 0


def _reported(run_dir: Path, started: float | None = None) -> int:
    """A job's last words: its verdict (the report's headline), how long it took, where the report is."""
    import re

    report = run_dir / "report.md"
    headline = next((line for line in report.read_text().splitlines() if line.startswith("**")), "") \
        if report.is_file() else ""
    if headline:
        print(re.sub(r"\*\*", "", headline))
    if started is not None:
        minutes, seconds = divmod(round(time.perf_counter() - started), 60)
        print(f"Took {minutes}m {seconds:02d}s.")
    print(f"Report: {report}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from distill.serve.server import run

    return run(args.model_dir, host=args.host, port=args.port, api_key_env=args.api_key_env,
               api_key_file=args.api_key_file,
               max_tokens_limit=args.max_tokens, max_request_bytes=args.max_request_bytes,
               max_batch=args.max_batch, model_name=args.model_name)


def _config(args: argparse.Namespace, loader: Any = None):
    from distill.recipes.classify.config import load_config

    loader = loader or load_config
    files = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if len(files) > 1:
        raise DistillError(f"Expected at most one config file, got {files}; overrides look like key=value.")
    if args.quiet:
        overrides.append("quiet=true")
    if getattr(args, "keep_state", False):
        overrides.append("keep_state=true")
    if not _smoke(args):
        return loader(files[0] if files else None, overrides)
    from distill.recipes.smoke import smoke_config

    return smoke_config(args.command, lambda o: loader(files[0] if files else None, o), overrides, args.smoke)


def _smoke(args: argparse.Namespace) -> bool:
    from distill.recipes.smoke import smoke_requested

    return smoke_requested(args.command, getattr(args, "smoke", False))


def _lm(args: argparse.Namespace) -> int:
    from distill.core.distributed import process_state
    from distill.recipes.lm.config import load_lm_config
    from distill.recipes.lm.pipeline import run_lm

    started, cfg = time.perf_counter(), _config(args, load_lm_config)
    run_dir = run_lm(cfg, resume=args.resume)
    return _reported(run_dir, started) if process_state(cfg.device).is_main_process else 0


def _lm_cache(args: argparse.Namespace) -> int:
    from distill.recipes.lm.config import load_lm_config
    from distill.recipes.lm.pipeline import build_caches

    cfg = _config(args, load_lm_config)
    for split, cache in build_caches(cfg).items():
        print(f"{split}: {cache.directory} ({cache.manifest['rows']} blocks, "
              f"{cache.bytes_per_token:.0f} bytes/token)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from distill.core.distributed import process_state
    from distill.recipes.classify.pipeline import run

    started, cfg = time.perf_counter(), _config(args)
    run_dir = run(cfg, resume=args.resume)
    return _reported(run_dir, started) if process_state(cfg.device).is_main_process else 0


def _train_teacher(args: argparse.Namespace) -> int:
    from distill.core.rundir import open_run_dir
    from distill.data.datasets import load_data
    from distill.recipes.classify.pipeline import load_or_train_teacher

    cfg = _config(args)
    run_dir = open_run_dir(cfg, resume=True)
    load_or_train_teacher(cfg, load_data(cfg.data), run_dir, resume=True)
    print(f"Teacher weights: {run_dir / 'teacher' / 'model.safetensors'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from distill.recipes.classify.tools import evaluate_trained

    _print(evaluate_trained(_config(args)), args.json)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from distill.recipes.classify.tools import bench_trained

    _print(bench_trained(_config(args)), args.json)
    return 0


def _monitor(args: argparse.Namespace) -> int:
    if args.recorded is not None:
        return _monitor_answers(args)
    if args.inputs is None:
        raise DistillError("distill monitor needs --inputs FILE (a classifier's production inputs), or "
                           "--recorded JSONL --endpoint URL (a served LM against recorded answers).")
    from distill.eval.monitor import MonitorOptions, model_inputs, run_monitor
    from distill.recipes.classify.tools import trained_models

    options = MonitorOptions(sample=args.sample, window=args.window, max_disagreement=args.max_disagreement,
                             max_kl=args.max_kl, seed=args.seed, fail_fast=args.fail_fast)
    cfg = _config(args)
    data, models = trained_models(cfg)
    inputs = model_inputs(args.inputs, data, where=f"data.name={cfg.data.name}", raw=args.raw)
    return run_monitor(models["teacher"], models["student"], inputs, options, as_json=args.json)


def _export(args: argparse.Namespace) -> int:
    if args.format == "gguf":
        return _export_gguf(args)
    from distill.recipes.classify.tools import export_trained

    if isinstance(args.check, str):
        raise DistillError(f"--check {args.check}: a text file is for --format gguf; for {args.format} "
                           "write --check alone (it uses the config's test split).")
    result = export_trained(_config(args), args.model, args.format, args.out, check=args.check, int8=args.int8)
    parity = result.get("parity")
    print(json.dumps(result, indent=2) if args.json else f"Wrote {args.out}" + (
        f"; on {int(parity['n'])} test inputs the export picks the model's class {parity['agreement']:.2%} "
        f"of the time, max |logit diff| {parity['max_abs_diff']:.2g}" if parity else ""))
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    from distill.recipes.lm.tools import describe_gguf, export_lm_gguf

    if len(args.args) != 1 or "=" in args.args[0] or args.check is True:
        raise DistillError("--format gguf takes the student's model directory (e.g. runs/lm_kjv/distilled/model), "
                           "not a config or overrides; its --check needs a text file: --check heldout.txt")
    result = export_lm_gguf(args.args[0], args.out, args.type, check_text=Path(args.check) if args.check else None,
                            teacher=args.teacher)
    print(json.dumps(result, indent=2) if args.json else describe_gguf(result))
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from distill.compress.quantize import save_int8
    from distill.recipes.classify.tools import quantize_trained

    out, int8 = quantize_trained(_config(args), args.method, args.backend, qat_epochs=args.qat_epochs,
                                 qat_lr=args.qat_lr)
    _print(out, args.json)
    if args.out:
        save_int8(int8, args.out)
        print(f"int8 weights: {args.out}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _report(args: argparse.Namespace) -> int:
    from distill.eval.report import render

    saved = args.run_dir / "report.json"
    kind = json.loads(saved.read_text()).get("kind") if saved.is_file() else None
    if kind == "lm":
        from distill.recipes.lm.report import render_lm

        print(f"Report: {render_lm(args.run_dir)}")
        return 0
    print(f"Report: {render(args.run_dir)}")
    return 0


def _print(results: dict[str, dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(results, indent=2))
        return
    keys = list(dict.fromkeys(k for r in results.values() for k, v in r.items() if isinstance(v, (int, float))))
    print(f"{'metric':<22}" + "".join(f"{name:>14}" for name in results))
    for k in keys:
        print(f"{k:<22}" + "".join(f"{r[k]:>14.4g}" if isinstance(r.get(k), (int, float)) else f"{'–':>14}"
                                    for r in results.values()))  # agreement, KL: the students' only


if __name__ == "__main__":
    sys.exit(main())
