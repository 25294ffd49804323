"""Copy a trained model folder into the package as the bundled default model, weights stored in float16.

    python tools/package_default_model.py RUN_DIR/final

writes src/mask2former/assets/default_model/{config.json, preprocessor_config.json, model.safetensors}. float16
halves the file (the model is loaded back into float32; the outputs move by about 1e-3 in the logits).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

TARGET = Path(__file__).resolve().parents[1] / "src" / "mask2former" / "assets" / "default_model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model folder written by `mask2former train` (OUTPUT_DIR/final)")
    args = parser.parse_args()
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copyfile(args.model / name, TARGET / name)
    state = load_file(args.model / "model.safetensors")
    half = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    save_file(half, TARGET / "model.safetensors", metadata={"format": "pt"})
    size = (TARGET / "model.safetensors").stat().st_size
    print(f"wrote {TARGET} ({size / 1e6:.1f} MB of weights, {sum(v.numel() for v in half.values()) / 1e6:.2f}M values)")


if __name__ == "__main__":
    main()
