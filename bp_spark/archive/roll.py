"""The roll: staged batches into the published files, one per patient and period; and removals.

A roll is safe under ``kill -9`` at any step because it is written down before it is done:

1. list the staged batches (whole ones: ``batch=<n>``) and group their files by patient and period;
2. choose each group's target, the last part of that patient and period (or a new part once it
   holds ``max_bytes``), and note its size now (``-1``: absent);
3. write the manifest (``_rolls/manifest.json``): the batches, and per target its sources and
   size before;
4. per target: an existing one is cut back to the size noted and the staged lines appended (done
   again after a crash, this gives the same file); a new one is written whole beside it and
   renamed onto it, or, made of one staged file, that file is renamed onto it (a new target a
   crashed attempt already made exists, and is left);
5. sync the file system, then record, per tag, the last batch rolled (``_rolls/<tag>/rolled_through``): a replay of such a
   batch has nothing more to archive;
6. delete the staged batches, then the manifest.

A manifest found at the next start (or before the next write) is finished from step 4.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import orjson

from bp_spark.files import Files
from bp_spark.archive.layout import (MANIFEST, PATIENT_PREFIX, PERIOD_PREFIX, PUBLISHED, STAGED_BATCH, STAGING,
                                     line_id, published_name, rolled_through_path, staged_batch)

log = logging.getLogger("bp_spark.sinks")


@dataclass
class RollResult:
    """What one roll did."""

    batches: int = 0
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0


def _with_newline(data: bytes) -> bytes:
    return data if not data or data.endswith(b"\n") else data + b"\n"


class Roller:
    """Rolls and rewrites one archive (``files``); ``max_bytes``: a part's size that starts the next."""

    def __init__(self, files: Files, max_bytes: int) -> None:
        self.files = files
        self.max_bytes = max_bytes

    # ------------------------------------------------------------------ what is staged

    def staged_batches(self) -> list[tuple[str, int]]:
        """(tag, batch id) of every whole staged batch, of every job that wrote here."""
        found = []
        for tag in self.files.names(STAGING):
            for name in self.files.names(f"{STAGING}/{tag}"):
                match = STAGED_BATCH.match(name)
                if match:
                    found.append((tag, int(match.group(1))))
        return sorted(found)

    def _parts_in(self, folder: str) -> list[str]:
        """The data files of a staged patient-and-period folder (not Hadoop's checksums and markers)."""
        return [f"{folder}/{name}" for name in self.files.names(folder) if not name.startswith((".", "_"))]

    def staged_sources(self, tag: str, batch_id: int) -> dict[tuple[str, str], list[str]]:
        """``{(patient folder, period): [staged files]}`` of one staged batch."""
        folder = staged_batch(tag, batch_id)
        groups: dict[tuple[str, str], list[str]] = {}
        for patient in self.files.names(folder):
            if not patient.startswith(PATIENT_PREFIX):
                continue
            for period in self.files.names(f"{folder}/{patient}"):
                if not period.startswith(PERIOD_PREFIX):
                    continue
                parts = self._parts_in(f"{folder}/{patient}/{period}")
                if parts:
                    groups[(patient, period[len(PERIOD_PREFIX):])] = parts
        return groups

    def rolled_through(self, tag: str) -> int:
        """The last batch of ``tag`` the roll published (-1: none)."""
        data = self.files.read(rolled_through_path(tag))
        return int(data.decode().strip()) if data and data.strip() else -1

    def parts(self, patient: str, period: str) -> list[tuple[int, str]]:
        """(part number, path) of the published files of one patient and period."""
        return self.published(patient).get(period, [])

    def published(self, patient: str) -> dict[str, list[tuple[int, str]]]:
        """The published files of one patient folder, by period: (part number, path), in order.
        A roll lists each patient's folder once (it holds a file per period: after a backfill of
        three years, ~1,250 names, listed once per patient, not once per staged file)."""
        found: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for name in self.files.names(patient):
            match = PUBLISHED.match(name)
            if match:
                found[match.group("period")].append((int(match.group("part")), f"{patient}/{name}"))
        return {period: sorted(parts) for period, parts in found.items()}

    # ------------------------------------------------------------------ the roll

    def roll(self) -> RollResult:
        """Publish every staged batch (finishing an interrupted roll first)."""
        started = time.monotonic()
        self.recover()
        for tag in self.files.names(STAGING):  # batches that broke off while staged: their replay stages them again
            for name in self.files.names(f"{STAGING}/{tag}"):
                if name.endswith(".tmp"):
                    self.files.delete(f"{STAGING}/{tag}/{name}")
        batches = self.staged_batches()
        if not batches:
            return RollResult()
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for tag, batch_id in batches:
            for key, sources in self.staged_sources(tag, batch_id).items():
                groups[key].extend(sources)
        targets = []
        published: dict[str, dict[str, list[tuple[int, str]]]] = {}
        for (patient, period), sources in sorted(groups.items()):
            if patient not in published:
                published[patient] = self.published(patient)
            parts = published[patient].get(period, [])
            incoming = sum(self.files.size(source) or 0 for source in sources)
            if parts:
                number, last = parts[-1]
                size = self.files.size(last) or 0
                if size and size + incoming > self.max_bytes:
                    number, last, size = number + 1, f"{patient}/{published_name(period, number + 1)}", -1
            else:
                last, size = f"{patient}/{published_name(period, 0)}", -1
            targets.append({"target": last, "size_before": size, "sources": sources})
        manifest = {"batches": [[tag, batch_id] for tag, batch_id in batches], "targets": targets}
        self.files.write(MANIFEST, [orjson.dumps(manifest)])
        result = self._finish(manifest)
        result.seconds = time.monotonic() - started
        return result

    def recover(self) -> bool:
        """Finish a roll a crash interrupted; return whether there was one."""
        data = self.files.read(MANIFEST)
        if data is None:
            return False
        log.warning("finishing an archive roll that was interrupted (its manifest lists %d files)",
                    len(orjson.loads(data)["targets"]))
        self._finish(orjson.loads(data))
        return True

    def _finish(self, manifest: dict) -> RollResult:
        result = RollResult(batches=len(manifest["batches"]))
        # Once the mark records every batch of the manifest, each target is whole and synced and
        # staged files may be gone: only their removal is left to finish.
        marked = all(batch_id <= self.rolled_through(tag) for tag, batch_id in manifest["batches"])
        for entry in [] if marked else manifest["targets"]:
            target, before = entry["target"], entry["size_before"]
            now = self.files.size(target)
            if before < 0 and now is not None:
                continue  # a new file an earlier attempt of this roll made
            if before >= 0 and (now is None or now < before):
                log.warning("an archive file the roll was to add to is gone or shorter than noted; left as it is")
                continue
            if before < 0 and len(entry["sources"]) == 1:
                # A new file from one staged file (a day's first readings, a backfill's history):
                # moved into place, not copied.
                self.files.rename(entry["sources"][0], target)
                result.files += 1
                result.bytes += self.files.size(target) or 0
                continue
            chunks = []
            for source in entry["sources"]:
                data = self.files.read(source)
                if data is None:
                    raise FileNotFoundError(f"the archive's staged file {source} is missing; the roll cannot finish")
                chunks.append(_with_newline(data))
            if before >= 0:  # appended in place: no read and rewrite of what the file holds
                self.files.append(target, chunks, before)
            else:
                self.files.write(target, chunks)
            result.files += 1
            result.bytes += sum(len(chunk) for chunk in chunks)
        self.files.sync()  # the appends and moves durable before the staged files and the manifest go
        last: dict[str, int] = {}
        for tag, batch_id in manifest["batches"]:
            last[tag] = max(batch_id, last.get(tag, -1))
        for tag, batch_id in last.items():
            if batch_id > self.rolled_through(tag):
                self.files.write(rolled_through_path(tag), [f"{batch_id}\n".encode()])
        for tag, batch_id in manifest["batches"]:
            self.files.delete(staged_batch(tag, batch_id))
        self.files.delete(MANIFEST)
        return result

    # ------------------------------------------------------------------ removals

    def files_of(self, patient: str, period: str) -> list[str]:
        """Every file that may hold a reading of this patient and period: published and staged."""
        found = [path for _, path in self.parts(patient, period)]
        for tag, batch_id in self.staged_batches():
            found += self._parts_in(f"{staged_batch(tag, batch_id)}/{patient}/{PERIOD_PREFIX}{period}")
        return found

    def remove(self, ids: set[str], files: list[str]) -> int:
        """Drop the lines of ``ids`` from ``files`` (each rewritten whole, or deleted once empty);
        return the lines removed."""
        removed = 0
        for path in files:
            data = self.files.read(path)
            if data is None:
                continue
            lines = data.splitlines()
            kept = [line for line in lines if line_id(line) not in ids]
            if len(kept) == len(lines):
                continue
            removed += len(lines) - len(kept)
            if kept:
                self.files.write(path, [b"\n".join(kept) + b"\n"])
            else:
                self.files.delete(path)
        return removed
