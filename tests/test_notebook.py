"""The flow statistics notebook, executed end to end; what its own cells print and show is
checked against the naive twin (tests/naive.py), which decides and keys every packet of the
capture by its own reading of the spec."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import naive
import nbclient
import nbformat
from capfile import read_records
from naive_forensic import Forensic
from support import SAMPLE, SAMPLE_PACKETS

from pcapslim import synth

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "flow_stats.ipynb"

# Appended to the notebook: what its cells computed and showed, as JSON.
SHOW = """
import json as _json
_shown = {
    "flows": flows.to_dict("records"),
    "top": flows[columns].head(TOP_FLOWS).to_dict("records"),
    "by_protocol": by_protocol.to_dict("index"),
    "by_category": by_category.to_dict("index"),
    "saved_over_time": int(saved.sum()),
}
fig.canvas.draw()
_shown["time_axis"] = {
    "ylabel": ax.get_ylabel(),
    "xlabel": ax.get_xlabel(),
    "ticks": [t.get_text() for t in ax.get_xticklabels() if t.get_text()],
    "offset": ax.xaxis.get_major_formatter().get_offset(),
}
print("SHOWN " + _json.dumps(_shown, default=str))
"""


def _execute(capture: Path | None = None, rules: str | None = None) -> Any:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    if capture is not None:  # set the path in the first code cell, as an analyst would
        first.source = first.source.replace("CAPTURE = None", f"CAPTURE = {str(capture)!r}")
    if rules is not None:
        first.source = first.source.replace("RULES = None", f"RULES = {rules!r}")
    nb.cells.append(nbformat.v4.new_code_cell(SHOW))
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )  # fmt: skip
    client.execute()  # raises CellExecutionError when any cell fails
    return nb


def _printed(nb: Any, prefix: str) -> str:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                for line in out["text"].splitlines():
                    if line.startswith(prefix):
                        return line
    raise AssertionError(f"the notebook printed no line starting {prefix!r}")


def _displayed_text(nb: Any, source_start: str) -> str:
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(source_start))
    return "".join(
        o["data"]["text/plain"] for o in cell.outputs if "text/plain" in o.get("data", {})
    )


def _images(nb: Any) -> int:
    return sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


def _address(raw: bytes, version: int) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw)) if version == 6 else ""


def twin_flows(data: bytes, forensic: bool = False) -> dict[tuple[Any, ...], dict[str, int]]:
    """Per bidirectional flow, by the twin: packets, cut packets, bytes before and after."""
    flows: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    decide = Forensic().decide if forensic else naive.decide
    for rec in read_records(data):
        version, _, (a, pa), (b, pb) = naive.flow_key(rec.frame, rec.link)
        verdict = decide(rec.frame, rec.link)
        f = flows[(_address(a, version), pa, _address(b, version), pb)]
        f["packets"] += 1
        f["truncated"] += verdict.category is not None
        f["bytes_before"] += len(rec.frame)
        f["bytes_after"] += len(verdict.frame)
        f[verdict.category or "kept"] += len(rec.frame) - len(verdict.frame)
    return flows


def _check_against_the_twin(
    nb: Any, data: bytes, disk_size: int | None = None, forensic: bool = False
) -> dict[str, Any]:
    """`data`: the capture's bytes (decompressed, for a compressed file of `disk_size`)."""
    twin = naive.slim_bytes(data, Forensic().decide if forensic else None)
    totals = json.loads(_printed(nb, '{"in_pkts"'))
    assert totals["in_pkts"] == twin.packets
    assert totals["truncated"] == sum(twin.categories.values())
    assert {k: v for k, v in totals["truncated_by"].items() if v} == twin.categories
    assert totals["in_bytes_uncompressed"] == len(data)
    assert totals["out_bytes_uncompressed"] == len(twin.data)
    if disk_size is None:
        assert totals["in_bytes"] == len(data) and totals["out_bytes"] == len(twin.data)
    else:
        assert totals["in_bytes"] == disk_size and 0 < totals["out_bytes"] < disk_size
    assert totals["tail_bytes"] == twin.tail

    shown = json.loads(_printed(nb, "SHOWN ")[len("SHOWN ") :])
    expected = twin_flows(data, forensic)
    # the twin's flows are keyed by endpoints alone; the notebook's by protocol too (ESP and
    # ICMPv6 between the same two addresses are two of its flows): summed per endpoint pair
    got: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for f in shown["flows"]:
        for k in ("packets", "truncated", "bytes_before", "bytes_after"):
            got[f["address_a"], f["port_a"], f["address_b"], f["port_b"]][k] += f[k]
    assert got == {
        k: {n: v[n] for n in ("packets", "truncated", "bytes_before", "bytes_after")}
        for k, v in expected.items()
    }
    saved = sorted((v["bytes_before"] - v["bytes_after"] for v in expected.values()), reverse=True)
    top = shown["top"]
    assert [t["bytes_saved"] for t in top] == saved[: len(top)]  # the largest savings first
    table = _displayed_text(nb, "columns = ")
    for t in top[:5]:  # what the analyst sees: the top rows' endpoints and savings
        assert t["address_a"] in table and str(t["bytes_saved"]) in table
    by_category: dict[str, int] = defaultdict(int)
    for v in expected.values():
        for name in ("kept", *naive_categories()):
            by_category[name] += v.get(name, 0)
    shown_saved = {
        name: row["bytes_before"] - row["bytes_after"] for name, row in shown["by_category"].items()
    }
    assert shown_saved == {k: v for k, v in by_category.items() if k in shown_saved}
    assert shown["saved_over_time"] == sum(saved)  # every packet of the sample has a time
    axis = shown["time_axis"]  # plain units and clock times, not pandas' Timedelta
    assert re.fullmatch(
        r"kB saved per (\d+ (ms|s|min|hours)|second|minute|hour|day)", axis["ylabel"]
    )
    assert axis["xlabel"] == "time (UTC)"
    assert axis["ticks"] and all(re.fullmatch(CLOCK, t) for t in axis["ticks"]), axis
    return totals


PER_STEP = r"kB saved per (\d+ (ms|s|min|hours)|second|minute|hour|day)"
CLOCK = r"\d\d:\d\d(:\d\d(\.\d+)?)?|\d\d(\.\d+)?|[A-Z][a-z]{2}(-\d\d)?|\d{4}"


def test_notebook_reads_a_compressed_capture(tmp_path):  # type: ignore[no-untyped-def]
    import zstandard

    f = tmp_path / "sample.pcap.zst"
    f.write_bytes(zstandard.ZstdCompressor(level=3).compress(SAMPLE.read_bytes()))
    nb = _execute(f)
    totals = _check_against_the_twin(nb, SAMPLE.read_bytes(), f.stat().st_size)
    assert totals["compression"] == "zstd"


def naive_categories() -> tuple[str, ...]:
    return ("tls", "tls_other_port", "ssh", "quic", "ipsec", "wireguard", "openvpn", "dtls", "srtp",
            "smb3")  # fmt: skip


def test_notebook_on_the_bundled_sample_shows_what_the_twin_finds():  # type: ignore[no-untyped-def]
    nb = _execute()
    totals = _check_against_the_twin(nb, SAMPLE.read_bytes())
    assert totals["in_pkts"] == SAMPLE_PACKETS
    assert _images(nb) == 3


def test_notebook_under_the_forensic_rules_shows_the_new_categories(tmp_path):  # type: ignore[no-untyped-def]
    """The real WireGuard, WebRTC, SMB 3 and ESP captures in one file, `RULES = "forensic"`:
    the totals, the flows and the by-category plot's bars are the twin's, and every category
    of SPEC §9 among them has its bar."""
    captures = Path(__file__).parent.parent / "fixtures" / "captures"
    recs = []
    for name in ("wireguard.pcap", "webrtc.pcap", "smb3_encrypted.pcap", "esp.pcap"):
        recs += read_records((captures / name).read_bytes())
    data = synth.pcap_bytes([synth.Record(r.frame, r.ts[0], r.ts[1], r.orig_len) for r in recs])
    f = tmp_path / "encrypted.pcap"
    f.write_bytes(data)
    nb = _execute(f, "forensic")
    totals = _check_against_the_twin(nb, data, forensic=True)
    shown = json.loads(_printed(nb, "SHOWN ")[len("SHOWN ") :])
    for category in ("wireguard", "srtp", "dtls", "smb3", "ipsec"):
        assert totals["truncated_by"][category] > 0
        assert category in shown["by_category"]
    assert "forensic rules" in _printed(nb, str(f))


def test_notebook_takes_a_capture_path_in_its_first_cell(tmp_path):  # type: ignore[no-untyped-def]
    from benches.gen_capture import generate

    f = tmp_path / "other.pcapng"
    generate(f, 2, fmt="pcapng", seed=9)
    copy = tmp_path / "copy.pcapng"
    shutil.copyfile(f, copy)
    nb = _execute(copy)
    _check_against_the_twin(nb, f.read_bytes())
    assert json.loads(_printed(nb, '{"in_pkts"'))["in_bytes"] == f.stat().st_size
