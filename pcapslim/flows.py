"""Per-flow truncation statistics: what slimming does to each conversation of a capture.

`packet_table` runs the analysis pass with the flow kernel beside it; `flow_table` groups the
packets into bidirectional flows as a pandas DataFrame (pandas loads only here).
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .constants import (
    CATEGORY_NAMES,
    MAX_TS_IFACES,
    N_PFIELDS,
    N_STATE,
    P_A0,
    P_APORT,
    P_B0,
    P_BPORT,
    P_CAPLEN,
    P_CAT,
    P_KEPT,
    P_LINK,
    P_PROTO,
    P_TS_NS,
    P_TUNNEL,
    P_VER,
    RULES_COMPATIBLE,
    TUN_DEPTH_SHIFT,
    TUNNEL_NAMES,
)
from .engine import MAX_RECORDS, process
from .formats import detect_format
from .kernelset import active
from .source import open_capture, open_source
from .stats import SlimStats

if TYPE_CHECKING:
    import numpy.typing as npt
    import pandas as pd

PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmpv6", 132: "sctp"}
NO_TIME_MIN = np.iinfo(np.int64).max  # stands for "no timestamp" when taking minima
KEY_COLUMNS = ["link", "tunnel", "ip_version", "proto", "a0", "a1", "a2", "a3", "port_a",
               "b0", "b1", "b2", "b3", "port_b"]  # fmt: skip


def packet_table(
    path: str | os.PathLike[str], rules: str = RULES_COMPATIBLE
) -> tuple[npt.NDArray[np.int64], SlimStats]:
    """(one int64 row per packet with the P_* fields, the file's SlimStats): one pass, deciding
    by `rules` ("compatible" or "forensic")."""
    name = os.fspath(path)
    fd = open_capture(name)
    try:
        with open_source(fd, False, 64, name, spare_core=False) as src:  # compressed: what it holds
            buf, _, start, end = src.window(0, 24)
            fmt = detect_format(bytes(buf[start:end]), name, src.codec)
        pcapng = fmt.name == "pcapng"
        state = np.zeros(N_STATE, dtype=np.int64)
        tsres = np.zeros(MAX_TS_IFACES, dtype=np.int64)
        out = np.zeros((MAX_RECORDS, N_PFIELDS), dtype=np.int64)
        words_a = np.zeros(4, dtype=np.int64)
        words_b = np.zeros(4, dtype=np.int64)
        parts: list[npt.NDArray[np.int64]] = []
        packet_rows = active().packet_rows

        def collect(buf: Any, rec: Any, n: int) -> None:
            m = packet_rows(
                buf,
                rec,
                n,
                pcapng,
                int(fmt.little_endian),
                fmt.nanosecond,
                state,
                tsres,
                out,
                words_a,
                words_b,
            )
            parts.append(out[:m].copy())

        stats = process(name, fd, None, on_window=collect, rules=rules)
    finally:
        os.close(fd)
    rows = np.concatenate(parts) if parts else np.zeros((0, N_PFIELDS), dtype=np.int64)
    return rows, stats


def _address(version: int, words: tuple[int, int, int, int]) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(words[3]))
    if version == 6:
        value = (words[0] << 96) | (words[1] << 64) | (words[2] << 32) | words[3]
        return str(ipaddress.IPv6Address(value))
    return ""


def _times(ns: npt.NDArray[np.int64], missing: int) -> Any:
    """Nanoseconds since the epoch as UTC timestamps; `missing` becomes NaT."""
    import pandas as pd

    values = np.where(ns == missing, np.iinfo(np.int64).min, ns).astype("datetime64[ns]")
    return pd.to_datetime(values, utc=True)


def packets_frame(rows: npt.NDArray[np.int64]) -> pd.DataFrame:
    """The packet rows as a DataFrame: flow key columns (the innermost packet's, and `tunnel`:
    the TUN_* bits of the tunnels it was found inside), sizes, `category` (a name, or "" when
    kept), one 0/1 column per category, and `ts_ns` (-1 without a timestamp)."""
    import pandas as pd

    cat = rows[:, P_CAT]
    cols: dict[str, Any] = {
        "link": rows[:, P_LINK],
        "tunnel": rows[:, P_TUNNEL] & ((1 << TUN_DEPTH_SHIFT) - 1),
        "ip_version": rows[:, P_VER],
        "proto": rows[:, P_PROTO],
        **{f"a{k}": rows[:, P_A0 + k] for k in range(4)},
        "port_a": rows[:, P_APORT],
        **{f"b{k}": rows[:, P_B0 + k] for k in range(4)},
        "port_b": rows[:, P_BPORT],
        "bytes_before": rows[:, P_CAPLEN],
        "bytes_after": rows[:, P_KEPT],
        "truncated": (cat > 0).astype(np.int64),
        "category": np.array(("",) + CATEGORY_NAMES, dtype=object)[cat],
        "ts_ns": rows[:, P_TS_NS],
    }
    for code, name in enumerate(CATEGORY_NAMES, start=1):
        cols[name] = (cat == code).astype(np.int64)
    packets = pd.DataFrame(cols)
    packets["protocol"] = _protocol_names(packets["ip_version"], packets["proto"])
    return packets


def _protocol_names(versions: Any, protos: Any) -> list[str]:
    return [
        PROTOCOL_NAMES.get(p, str(p)) if v else "non-ip"
        for v, p in zip(versions.tolist(), protos.tolist())
    ]


def group_flows(packets: pd.DataFrame) -> pd.DataFrame:
    """One row per bidirectional flow, largest saving first (see `flow_table`)."""
    ts = packets["ts_ns"].to_numpy()
    packets = packets.assign(ts_min=np.where(ts >= 0, ts, NO_TIME_MIN), ts_max=ts)
    agg = {c: "sum" for c in ("bytes_before", "bytes_after", "truncated", *CATEGORY_NAMES)}
    grouped = packets.groupby(KEY_COLUMNS, sort=False)
    flows = grouped.agg(agg)
    flows["packets"] = grouped.size()
    flows["first_seen"] = _times(grouped["ts_min"].min().to_numpy(), NO_TIME_MIN)
    flows["last_seen"] = _times(grouped["ts_max"].max().to_numpy(), -1)
    flows = flows.reset_index()
    a_words = flows[["a0", "a1", "a2", "a3"]].to_numpy().tolist()
    b_words = flows[["b0", "b1", "b2", "b3"]].to_numpy().tolist()
    versions = flows["ip_version"].tolist()
    flows["address_a"] = [_address(v, tuple(w)) for v, w in zip(versions, a_words)]
    flows["address_b"] = [_address(v, tuple(w)) for v, w in zip(versions, b_words)]
    flows["protocol"] = _protocol_names(flows["ip_version"], flows["proto"])
    flows["tunnels"] = [
        ",".join(name for bit, name in enumerate(TUNNEL_NAMES) if t >> bit & 1)
        for t in flows["tunnel"].tolist()
    ]
    flows["bytes_saved"] = flows["bytes_before"] - flows["bytes_after"]
    flows["categories"] = [
        ",".join(name for name in CATEGORY_NAMES if row[name])
        for row in flows[list(CATEGORY_NAMES)].to_dict("records")
    ]
    order = ["link", "tunnels", "ip_version", "protocol", "address_a", "port_a", "address_b",
             "port_b", "packets", "bytes_before", "bytes_after", "bytes_saved", "truncated",
             *CATEGORY_NAMES, "categories", "first_seen", "last_seen"]  # fmt: skip
    flows = flows[order].sort_values("bytes_saved", ascending=False, kind="stable")
    return flows.reset_index(drop=True)


def flow_table(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, SlimStats]:
    """One row per bidirectional flow, largest saving first, and the file's SlimStats.

    Columns: link, tunnels (the kinds of SPEC §10 the flow's packets were found inside,
    comma-separated), ip_version, protocol, address_a, port_a, address_b, port_b (of the
    innermost packets), packets, bytes_before, bytes_after, bytes_saved, truncated, one count per
    cut category, categories (the categories seen, comma-separated), first_seen, last_seen.
    Endpoint A is the smaller (address, port); packets without IP form one flow per link type.
    """
    rows, stats = packet_table(path)
    return group_flows(packets_frame(rows)), stats
