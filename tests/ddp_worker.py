"""One rank of a data-parallel test run (tests/test_ddp.py starts one process per rank, with
torchrun's variables set): calls `parnasc.api.search` or `parnasc.api.retrain` as torchrun'd
`parnasc` would, recording what this rank wrote, its final networks and the threads of a
process group still running when the call has returned.

Usage: python ddp_worker.py CONFIG.json; CONFIG holds `call` ("search" or "train"), `kwargs`
for the API call, `report` (where this rank writes RANK.json and RANK.pt) and optionally
`interrupt_epoch` (raise KeyboardInterrupt before that epoch on every rank, as a kill after
the previous epoch's checkpoint would leave the run).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    rank = int(os.environ["RANK"])
    report = Path(config["report"])
    root = Path(config["kwargs"].get("run_dir") or config["kwargs"]["out_dir"]).resolve()
    written: list[str] = []
    real_replace, real_unlink = os.replace, os.unlink

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).resolve().is_relative_to(root):
            written.append(Path(dst).name)
        real_replace(src, dst, *args, **kwargs)

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).resolve().parent == root:
            written.append(f"-{Path(path).name}")
        real_unlink(path, *args, **kwargs)

    os.replace, os.unlink = replace, unlink  # type: ignore[assignment]

    import parnasc.nas.search as search_mod
    import parnasc.nas.train as train_mod
    from parnasc import api

    nets: list[torch.nn.Module] = []
    real_lower = search_mod.lower

    def lower(ir: Any) -> Any:  # the supernet, then the concrete network
        net = real_lower(ir)
        nets.append(net)
        return net

    search_mod.lower = lower  # type: ignore[assignment]
    real_retrain = train_mod.retrain

    def retrain(net: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        nets.append(net)
        return real_retrain(net, *args, **kwargs)

    train_mod.retrain = retrain  # type: ignore[assignment]
    stop = config.get("interrupt_epoch")
    if stop is not None:
        real_epoch = search_mod._epoch

        def epoch(*args: Any) -> Any:
            if args[7] == stop:  # (net, w_opt, a_opt, train, val, costs, settings, epoch, ...)
                raise KeyboardInterrupt
            return real_epoch(*args)

        search_mod._epoch = epoch  # type: ignore[assignment]
    out: dict[str, Any] = {"rank": rank}
    try:
        if config["call"] == "search":
            result = api.search(**config["kwargs"])
            out.update(choices=result.choices, probabilities=result.probabilities)
            out["val_acc"] = result.val_acc
        else:
            trained = api.retrain(**config["kwargs"])
            out["test_acc"] = trained.test_acc
        out["threads"] = torch.get_num_threads()
    except KeyboardInterrupt:
        out["interrupted"] = True
    out["written"] = written
    # the threads of a process group still alive now (gloo's, the TCP store's): none once the
    # run's group is destroyed (Linux names them in /proc)
    tasks = Path("/proc/self/task")
    names = [(t / "comm").read_text().strip() for t in tasks.iterdir()] if tasks.is_dir() else []
    out["group_threads"] = [n for n in names if "gloo" in n or "tcpstore" in n]
    torch.save([n.state_dict() for n in nets], report / f"{rank}.pt")
    (report / f"{rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
