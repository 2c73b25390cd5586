"""What each command of the command line runs without a config file (the built-in jobs), and one example of
each (shown by `distill COMMAND --help`)."""

from __future__ import annotations

_CLASSIFIER = "the built-in job: MNIST-5k, labels on 10% of the images, a CNN teacher, an MLP student"
BUILT_IN = {"run": _CLASSIFIER, "lm": "the built-in LM job: SmolLM2-135M-Instruct → a 1-layer student on the KJV "
            "Bible", "lm-cache": "the built-in LM job's teacher cache (SmolLM2-135M-Instruct, KJV Bible)",
            "textkd": "the built-in BBC News job: a fine-tuned SmolLM2 teacher labels and explains, 4-layer students",
            "generate": "the built-in BBC News job's teacher, prompts and sampling",
            "task": "the built-in addition job: a fine-tuned SmolLM2 teacher, 1-layer students by answer SFT, "
                    "seq-KD and on-policy distillation",
            "search": "none: a search config is required, e.g. configs/search_fmnist.yaml"}
_WEIGHTS = "teacher.checkpoint=runs/default/teacher/model.safetensors " \
           "student.checkpoint=runs/default/distilled/model.safetensors"
EXAMPLES = {
    "run": "distill run configs/fashion_mnist.yaml train.epochs=20 kd.ratio=0.7",
    "train-teacher": "distill train-teacher configs/fashion_mnist.yaml",
    "eval": f"distill eval {_WEIGHTS}",
    "bench": f"distill bench {_WEIGHTS} --json",
    "lm": "distill lm kd.divergence=jsd kd.warm_start=75 train.steps=300",
    "lm-cache": "distill lm-cache my_lm.yaml teacher.top_k=32",
    "export": "distill export student.checkpoint=runs/default/distilled/model.safetensors --format onnx "
              "--out student.onnx --check",
    "monitor": f"distill monitor {_WEIGHTS} --inputs requests.jsonl --sample 0.05",
    "search": "distill search configs/search_fmnist.yaml --resume",
    "prune": "distill prune teacher.checkpoint=runs/default/teacher/model.safetensors --reduction 0.8 --out pruned",
    "quantize": "distill quantize student.checkpoint=runs/default/distilled/model.safetensors --out student.int8.pt",
    "report": "distill report runs/default",
    "generate": "distill generate --output answers.jsonl --prompts prompts.jsonl teacher.backend=openai "
                "teacher.base_url=http://127.0.0.1:8000/v1 teacher.model=my-model",
    "textkd": "distill textkd teacher.backend=local \"kinds=[label_only, step_by_step]\" train.steps=200",
    "serve": "distill serve runs/lm-kjv/distilled/model --port 8000",
    "config": "distill config task data.source=prompts.jsonl --json",
    "task": "distill task data.source=task.jsonl task.score=exact \"arms=[seq_kd, on_policy]\" seeds=[0,1,2] name=my-task",
}
