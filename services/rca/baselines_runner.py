"""Runs RCAEval's baselines on case directories; executed by the separate RCAEval venv (Python 3.12).

Reads case directory paths from argv, prints one JSON line per case and method:
{"case": DIR, "method": NAME, "ranks": [service, ...], "seconds": S} (or "error").
It imports nothing of Faultline: it runs under another interpreter.
"""

import json
import sys
import time
import warnings

import pandas as pd

warnings.filterwarnings("ignore")


def services_of(ranks):
    out = []
    for name in ranks:
        service = str(name).split("_")[0]
        if service.endswith("-db"):
            service = service[:-3]
        if service not in out:
            out.append(service)
    return out


TRACE_WINDOW_S = 60  # MicroRank's PageRank is slow: the trace methods see ±60 s around the inject time


def main(cases):
    from RCAEval.e2e import baro, microrank, nsigma, tracerca

    for case in cases:
        with open(f"{case}/inject_time.txt") as f:
            inject = int(f.read().split()[0])
        metrics = pd.read_csv(f"{case}/data.csv")
        metrics = metrics[[c for c in metrics.columns if not c.endswith("latency-50")]]
        metrics = metrics.rename(columns={c: c.replace("latency-90", "latency") for c in metrics.columns})
        traces = pd.read_csv(f"{case}/traces.csv", keep_default_na=False)
        window = traces.startTime.between((inject - TRACE_WINDOW_S) * 1_000_000, (inject + TRACE_WINDOW_S) * 1_000_000)
        traces = traces[window][
            ["traceID", "spanID", "parentSpanID", "serviceName", "methodName", "operationName", "startTime", "duration"]
        ]
        # never dataset=None (baro would rank the "time" column); trace methods take µs, like the spans
        jobs = [
            ("baro", baro, metrics, inject),
            ("nsigma", nsigma, metrics, inject),
            ("microrank", microrank, traces, inject * 1_000_000),
            ("tracerca", tracerca, traces, inject * 1_000_000),
        ]
        for method, func, data, at in jobs:
            began = time.perf_counter()
            try:
                ranks = services_of(func(data, at, dataset="re2-ob")["ranks"])
                row = {"case": case, "method": method, "ranks": ranks}
            except Exception as error:
                row = {"case": case, "method": method, "error": f"{type(error).__name__}: {error}"}
            row["seconds"] = round(time.perf_counter() - began, 3)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
