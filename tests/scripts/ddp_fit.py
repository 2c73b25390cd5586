"""Tiny distillation fit used by test_distributed.py: `torchrun --nproc_per_node=N ddp_fit.py OUT_DIR`."""

import json
import sys
from pathlib import Path

from distill.config import DataConfig, ModelConfig, TrainConfig
from distill.data import load_data
from distill.losses import KD
from distill.models import build_model
from distill.signals import LiveTeacher
from distill.training import fit, process_state


def main() -> None:
    out_dir = Path(sys.argv[1])
    data = load_data(DataConfig(name="digits", limit=400))
    teacher = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [32]}), data.input_shape, 10, seed=1)
    student = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [16]}), data.input_shape, 10, seed=0)
    result = fit(student, data.train, objective=KD(), config=TrainConfig(epochs=2, batch_size=32),
                 num_classes=10, teacher=LiveTeacher(teacher), val_data=data.val,
                 checkpoint_dir=out_dir / "ckpt", quiet=True, device="cpu")
    state = process_state("cpu")
    record = {"world": state.num_processes, "history": result.history}
    (out_dir / f"rank{state.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
