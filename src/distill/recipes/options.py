"""The command line's options of the commands that take more than a config (export, monitor, quantize, serve),
kept apart from its dispatch (`distill.cli`), as the built-in jobs' texts are (`commands`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def export_options(p: argparse.ArgumentParser) -> None:
    """distill export: what to write, where, and the checks."""
    p.add_argument("--format", choices=["onnx", "safetensors", "hf", "gguf"], required=True,
                     help="what to write; gguf takes an LM student's model directory instead of a config")
    p.add_argument("--out", type=Path, required=True, help="the file (onnx, safetensors, gguf) or directory (hf)")
    p.add_argument("--type", choices=["f16", "q8_0", "q4_0"], default="q8_0",
                     help="GGUF only: the weights' type (default q8_0)")
    p.add_argument("--teacher", metavar="MODEL", help="GGUF --check only: also compare with this teacher "
                     "(a directory, hub id or builtin: name)")
    p.add_argument("--model", choices=["student", "teacher"], default="student",
                     help="which checkpoint of the config to export (default: student)")
    p.add_argument("--check", nargs="?", const=True, default=False, metavar="TEXT_FILE",
                     help="compare the export with PyTorch on the test split (fails loudly); for gguf, "
                     "run it in llama.cpp on the held-out texts of TEXT_FILE")
    p.add_argument("--int8", action="store_true",
                     help="ONNX only: write the ONNX Runtime dynamically quantized (int8 weights) model")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def monitor_options(p: argparse.ArgumentParser) -> None:
    """distill monitor: the inputs or recorded answers, sampling, windows and thresholds."""
    p.add_argument("--inputs", metavar="FILE|-",
                     help="classifier: JSON lines ({\"inputs\": [...]} or a bare nested list), .npy or "
                     ".safetensors; - is stdin. Model inputs: after the dataset's preprocessing (built-in "
                     "images: pixels/255, standardised with the training split's mean and std)")
    p.add_argument("--raw", action="store_true", help="--inputs are in the units of the dataset's files "
                   "(e.g. pixels 0-255): preprocess each as the training data was")
    p.add_argument("--recorded", type=Path, metavar="JSONL",
                     help="LM: an OpenAI chat fine-tuning JSONL whose last assistant messages are the teacher's "
                     "answers; each conversation is sent to --endpoint and the answers compared")
    p.add_argument("--endpoint", metavar="URL", help="with --recorded: the served student, e.g. "
                     "http://127.0.0.1:8000/v1")
    p.add_argument("--model", dest="endpoint_model", metavar="NAME",
                     help="with --recorded: the model name to ask for (default: the server's first model)")
    p.add_argument("--min-f1", type=float, default=0.5, metavar="F",
                     help="with --recorded: alert below this mean word-overlap F1 (default 0.5)")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N",
                     help="with --recorded: the longest answer asked for (default 256)")
    p.add_argument("--sample", type=float, default=0.1, metavar="F",
                     help="fraction of inputs checked (default 0.1)")
    p.add_argument("--window", type=int, default=1000, metavar="N",
                     help="sampled inputs per window (default 1000)")
    p.add_argument("--max-disagreement", type=float, default=0.05, metavar="F",
                     help="alert above this share of disagreements (default 0.05)")
    p.add_argument("--max-kl", type=float, default=0.1, metavar="NATS",
                     help="alert above this mean KL(T‖S) (default 0.1)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="sampling seed")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first alerting window")
    p.add_argument("--json", action="store_true", help="one JSON line per window instead of a table")


def quantize_options(p: argparse.ArgumentParser) -> None:
    """distill quantize: the method, its engine and where the int8 model goes."""
    p.add_argument("--method", choices=["dynamic", "static", "qat"], default="static",
                    help="static: conv + linear, calibrated on training data (default); dynamic: Linear only; "
                    "qat: fine-tune with fake quantization, distilling from teacher.checkpoint")
    p.add_argument("--qat-epochs", type=int, default=2, metavar="N", help="qat: fine-tuning epochs (default 2)")
    p.add_argument("--qat-lr", type=float, default=3e-4, metavar="LR", help="qat: AdamW learning rate (default 3e-4)")
    p.add_argument("--backend", default="x86", help="int8 engine: x86 (default), fbgemm, onednn, qnnpack (ARM)")
    p.add_argument("--out", type=Path, help="write the int8 state dict here (reload: distill.compress.quantize.load_int8)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def serve_options(p: argparse.ArgumentParser) -> None:
    """distill serve: the model, the address, keys and request limits."""
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only; "
                     "any other address needs --api-key-env or --api-key-file)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--api-key-env", metavar="NAME", help="require the key held in environment variable NAME")
    p.add_argument("--api-key-file", metavar="PATH", type=Path,
                     help="require the key held in file PATH (e.g. a Docker/Kubernetes secret)")
    p.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    p.add_argument("--max-request-bytes", type=int, default=1_000_000, help="largest request body")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    p.add_argument("--model-name", metavar="NAME", help="the model name clients send (default: the "
                     "directory's name); e.g. the hosted model's name, so client code keeps working")
