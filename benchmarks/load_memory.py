"""Peak host memory of loading a sharded checkpoint: the streaming loader vs reading every shard.

Writes a NemotronH checkpoint of several safetensors shards (bf16, transformers' save_pretrained
with ``--shard-mb``; random weights of a config wider than the tiny model: hidden 1024, 32
experts in a 512 latent, 8 layers), then loads it in a fresh process per case and reports the
peak resident set size (VmHWM of /proc/self/status) above the process's RSS just before loading (torch imported):

- ``read_all`` (baseline): every tensor of every shard read into host memory (load_file + clone),
  then placed into the model, as a loader that reads the whole checkpoint first would;
- ``stream_tp1``: the engine's loader, one rank holding everything;
- ``stream_tp2_rank0`` / ``stream_ep2_rank0``: rank 0 of tp 2 / ep 2, reading only its slice.

Beside each: the rank's own weight bytes (what it keeps) and the largest shard. The loader's
claim: peak ~ one shard + the rank's share.

    python benchmarks/load_memory.py [--shard-mb 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WIDE = {
    "hidden_size": 1024, "hybrid_override_pattern": "MEMEM*ME", "num_attention_heads": 16, "num_key_value_heads": 4,
    "head_dim": 64, "intermediate_size": 2048, "mamba_num_heads": 32, "mamba_head_dim": 64, "ssm_state_size": 64,
    "n_groups": 4, "n_routed_experts": 32, "num_experts_per_tok": 4, "moe_intermediate_size": 1024,
    "moe_shared_expert_intermediate_size": 2048, "moe_latent_size": 512, "vocab_size": 8192, "num_nextn_predict_layers": 0,
}

CASES = {
    "read_all": None,
    "stream_tp1": "ParallelConfig()",
    "stream_tp2_rank0": "ParallelConfig(tp_rank=0, tp_size=2)",
    "stream_ep2_rank0": "ParallelConfig(ep_rank=0, ep_size=2)",
}

CHILD = """
import json, resource, sys, re
import torch
from safetensors.torch import load_file
from nemodeploy.engine.loader import load_model
from nemodeploy.engine.model.parallel import ParallelConfig
directory, parallel = sys.argv[1], sys.argv[2]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
base = rss()
if parallel == "None":  # every tensor in memory first, then placed into the model
    from pathlib import Path
    from types import SimpleNamespace
    from nemodeploy.engine.loader import load_weights
    from nemodeploy.engine.model.nemotron_h import NemotronHForCausalLM
    from nemodeploy.models.config import NemotronHConfig
    state = {k: t.clone() for p in sorted(Path(directory).glob("*.safetensors")) for k, t in load_file(p).items()}
    model = NemotronHForCausalLM(NemotronHConfig.from_file(directory), dtype=torch.bfloat16, with_mtp=False)
    reader = SimpleNamespace(files=dict.fromkeys(state, Path(directory)), read=state.__getitem__, close=lambda: None,
                             directory=Path(directory))
    load_weights(model, reader)
else:
    model = load_model(directory, torch.bfloat16, parallel=eval(parallel), with_mtp=False, progress=None)
kept = sum(p.numel() * p.element_size() for p in model.parameters())
peak = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(json.dumps({"peak_above_start_mb": round((peak - base) / 2**20, 1), "kept_mb": round(kept / 2**20, 1)}))
"""


def write_checkpoint(directory: Path, shard_mb: int) -> None:
    import torch
    from transformers import NemotronHForCausalLM

    from nemodeploy.engine.tiny import SPEC, _hf_config

    spec = json.loads(SPEC.read_text()) | WIDE
    spec.pop("mtp_hybrid_override_pattern")
    torch.manual_seed(0)
    model = NemotronHForCausalLM(_hf_config(spec)).to(torch.bfloat16)
    model.save_pretrained(directory, max_shard_size=f"{shard_mb}MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-mb", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        directory = Path(work)
        write_checkpoint(directory, args.shard_mb)
        shards = sorted(directory.glob("*.safetensors"))
        result = {
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "shards": len(shards),
            "largest_shard_mb": round(max(p.stat().st_size for p in shards) / 2**20, 1),
            "checkpoint_mb": round(sum(p.stat().st_size for p in shards) / 2**20, 1),
        }
        for name, parallel in CASES.items():
            out = subprocess.run([sys.executable, "-c", CHILD, str(directory), str(parallel)], check=True,
                                 capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
            case = json.loads(out.stdout.strip().splitlines()[-1])
            case["peak_minus_kept_mb"] = round(case["peak_above_start_mb"] - case["kept_mb"], 1)
            result[name] = case
            print(name, case, flush=True)
        base = result["read_all"]["peak_above_start_mb"]
        result["stream_tp1_vs_read_all"] = round(result["stream_tp1"]["peak_above_start_mb"] / base, 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
