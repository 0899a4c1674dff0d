"""The load benchmark: schedules, the one-request client, records, pure metrics, reports.

Kept apart, as in vLLM's ``benchmarks/serve.py`` and GuideLLM's scheduler:

* :mod:`._schedule`  when requests go out (closed loop, with a ramp-up; open loop with gamma arrivals)
* :mod:`._client`    one request over a lean HTTP/1.1 + SSE client (or an in-process backend)
* :mod:`._records`   one frozen :class:`RequestRecord` per request
* :mod:`._load`      the :class:`LoadGenerator` that runs a schedule against a client
* :mod:`._metrics`   :func:`compute_metrics`, a pure function of the records
* :mod:`._procstat`  server and generator CPU and memory
* :mod:`._run`       one run end to end (:func:`run_bench`, :func:`run_sweep`)
* :mod:`._report`    terminal table, JSON, PNG plots
"""

from ._client import BackendClient, HTTPClientStatistics, HTTPStreamClient, RequestClient
from ._http import HTTPProtocolError, ResponseHead, ResponseParser, build_request
from ._load import LoadGenerator, LoadResult, LoadStatistics
from ._metrics import SLO, BenchMetrics, Summary, compute_metrics, peak_concurrency, percentile
from ._procstat import CPUTimes, ProcessTreeSample, process_cpu_self, sample_process_tree
from ._records import Outcome, RequestRecord, RequestTrace
from ._report import (
    ProgressLine,
    cdf_points,
    format_result,
    format_sweep,
    result_to_json,
    write_plots,
)
from ._run import (
    BenchResult,
    ClientFigures,
    ServerFigures,
    environment,
    run_bench,
    run_sweep,
    sweep_point,
)
from ._schedule import arrival_times, ramp_offsets, shard, split_evenly

__all__ = [
    "BackendClient",
    "BenchMetrics",
    "BenchResult",
    "CPUTimes",
    "ClientFigures",
    "HTTPClientStatistics",
    "HTTPProtocolError",
    "HTTPStreamClient",
    "LoadGenerator",
    "LoadResult",
    "LoadStatistics",
    "Outcome",
    "ProcessTreeSample",
    "ProgressLine",
    "RequestClient",
    "RequestRecord",
    "RequestTrace",
    "ResponseHead",
    "ResponseParser",
    "SLO",
    "ServerFigures",
    "Summary",
    "arrival_times",
    "build_request",
    "cdf_points",
    "compute_metrics",
    "environment",
    "format_result",
    "format_sweep",
    "peak_concurrency",
    "percentile",
    "process_cpu_self",
    "ramp_offsets",
    "result_to_json",
    "run_bench",
    "run_sweep",
    "sample_process_tree",
    "shard",
    "split_evenly",
    "sweep_point",
    "write_plots",
]
