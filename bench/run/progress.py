"""What a run is doing, on stderr: the progress of its cells as the executors report it.

An executor (bench.run.executors) calls its ``progress`` callable with ``("plan", {...})``,
``("start", {"cell_id"})``, ``("tick", {"cell_id", "elapsed", "doing"})`` and ``("done", row)``;
``Progress`` is the callable ``mixbench run``, ``mixbench sweep`` and ``mixbench reference`` give it.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

# How the progress line names a cell's timing phase (backends.base.TIMING_PHASES) while it runs.
DOING = {"compile": "compiling", "compile_wait": "waiting for another process's build", "warmup": "warming up",
         "optimisation": "optimising", "extraction": "extracting"}


COMPILER_NOISE = re.compile(r"^\s*\d*\s*\|| from \S+\.(?:h|hpp|cpp|cc|tpp)[:,]|^In file included from|"
                            r"\.(?:h|hpp|cpp|cc|tpp):\d+(?::\d+)?: (?:warning|note|error|required|In )")


class Progress:
    """What the run is doing, on stderr.

    On a terminal: one status line, rewritten in place, naming every cell in flight, what its
    worker says it is doing (compiling, warming up; ``DOING``) and its time so far (all of them, so two cells in flight do not take turns on the line). Piped (a log
    file, CI): a line when a cell starts and when it ends, and while cells run a line at least
    every ``heartbeat_s`` seconds (a long compile shows up as a run that is alive), with the last
    line the cell's engine wrote to its log when it wrote one.
    """

    heartbeat_s = 25.0  # under 30 s, however the executor's ticks fall

    def __init__(self, total: int, stream=None, log_dir: Path | None = None, clock=time.monotonic):
        stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced since import
        self.total, self.done, self.stream = total, 0, stream
        self.live = stream.isatty()
        self.log_dir, self.clock = log_dir, clock
        self.running: dict[str, float] = {}  # cell id -> seconds so far
        self.doing: dict[str, str | None] = {}  # cell id -> what its worker says it does now
        self.last_line = clock()

    def _doing(self, cell_id: str) -> str:
        doing = self.doing.get(cell_id)
        return f"{doing} " if doing else ""

    def _print(self, text: str, end: str = "\n") -> None:
        print(text, end=end, file=self.stream, flush=True)
        self.last_line = self.clock()

    def _log_tail(self, cell_id: str, python_only: bool = False) -> str:
        if self.log_dir is None:
            return ""
        try:
            with open(self.log_dir / f"{cell_id}.log", "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - 2000))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        # Progress bars redraw with carriage returns and colour codes: keep the last plain line.
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
        # Lines without a word (a compiler's "| ^~~~" markers) say nothing, nor the line of source
        # Python's warnings echo under "file:line: SomeWarning: message".
        lines, after_warning = [], False
        for line in re.split(r"[\r\n]", text):
            if after_warning and line.startswith(" "):
                after_warning = False
                continue
            after_warning = re.search(r"\w+Warning: ", line) is not None
            # A C++ compiler's diagnostics ("507 | atomic<T*>: ...", "In file included from
            # x.hpp:3", "y.hpp:12:5: warning: ...") are noise from a Stan build, not progress.
            if COMPILER_NOISE.search(line) or (python_only and not re.search(r"\w+(?:Warning|Error): ", line)):
                continue
            if re.search(r"[A-Za-z]{3}", line):
                lines.append(line.strip())
        return lines[-1][:80] if lines else ""

    def __call__(self, event: str, info: dict) -> None:
        if event == "plan":  # a new plan: counted from 0 (one per reference cell, then the run's)
            self.total, self.done = info["todo"], 0
            if info["finished_before"]:
                self._print(f"resuming: {info['finished_before']} cells already finished, {info['todo']} to run")
        elif event == "start":
            self.running[info["cell_id"]] = 0.0
            if not self.live:
                self._print(f"[{self.done + len(self.running)}/{self.total}] {info['cell_id']} started")
        elif event == "tick":
            self.running[info["cell_id"]] = info["elapsed"]
            self.doing[info["cell_id"]] = DOING.get(info.get("doing"), info.get("doing"))
            if self.live:
                width = shutil.get_terminal_size((100, 20)).columns
                cells = ", ".join(f"{cell} {self._doing(cell)}{seconds:.0f} s" for cell, seconds in self.running.items())
                text = f"[{self.done}/{self.total} done] running {cells}"
                print("\r" + text[: width - 1].ljust(width - 1), end="", file=self.stream, flush=True)
            elif self.clock() - self.last_line >= self.heartbeat_s:
                for cell, seconds in self.running.items():
                    # While a program compiles, the log's other lines are the C++ compiler's
                    # (template diagnostics, cut anywhere by the tail's window): only a Python
                    # warning or error there is news.
                    compiling = self.doing.get(cell) in (DOING["compile"], DOING["compile_wait"])
                    tail = self._log_tail(cell, python_only=compiling)
                    self._print(f"  ... {cell} still running, {self._doing(cell)}{seconds:.0f} s"
                                + (f": {tail}" if tail else ""))
        elif event == "done":
            self.done += 1
            self.running.pop(info["cell_id"], None)
            self.doing.pop(info["cell_id"], None)
            status = info.get("status")
            detail = f": {info.get('error') or info.get('reason')}" if status != "ok" else ""
            line = f"[{self.done}/{self.total}] {info['cell_id']} {status} in {info.get('time_cell', 0):.1f} s{detail}"
            if self.live:
                width = shutil.get_terminal_size((100, 20)).columns
                line = "\r" + line.ljust(width - 1)
            self._print(line)
            for note in info.get("warnings") or ():
                self._print(f"  warning: {note}")
