"""PyMC's ADVI and pymc-extras' Pathfinder compiled once per process, seeds given per fit.

PyMC bakes the seed of an ADVI run into its compiled step function: ``Inference(random_seed=s)``
seeds a RandomState that draws the starting point's seed and then the seed ``compile`` gives
the step function's random generators (``pymc.pytensorf.reseed_rngs``: PCG64 streams spawned
from a SeedSequence). Here one prepared object (after ``fit(0)``: approximation built, step
function compiled) serves every seed: ``prepare`` builds it with a fixed seed, records the
values of the step function's shared variables (the approximation's parameters and the
optimiser's state), and before each fit restores them and gives the random generators the
streams ``Inference(random_seed=seed)`` would have (``reseed``). A fit at seed s therefore
draws what PyMC's own object built with seed s draws (tests/test_pymc_vi_store.py), whether it
is the process's first fit or not.

pymc-extras' single-path Pathfinder function takes its seed per call already; ``single_path``
keeps the function in memory, so later fits of one shape skip reloading it from the store.
Prepared objects and functions are kept per process in small LRU maps keyed by the store's
description (the spec, data, method and settings: never the seed).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import numpy as np
from pytensor.tensor.random.type import RandomGeneratorType

from backends.timing import note_compile
from backends.pytensor_store import function_key, load_or_build

BUILD_SEED = 0  # the seed the shared object is built with; every fit reseeds it
MEMORY = 8  # prepared objects (and Pathfinder functions) kept per process


class _LRU(OrderedDict):
    def get_or_make(self, key: str, make: Callable[[], Any]) -> Any:
        if key in self:
            self.move_to_end(key)
            note_compile("warm")
            return self[key]
        value = self[key] = make()
        if len(self) > MEMORY:
            self.popitem(last=False)
        return value


_ADVI: _LRU = _LRU()
_PATHFINDER: _LRU = _LRU()


def _step_seed(seed: int) -> int:
    """The seed PyMC's ``step_function`` passes to ``compile`` for ``Inference(random_seed=seed)``:
    the second draw of the approximation's RandomState, after the starting point's."""
    state = np.random.RandomState(seed)
    state.randint(2**30, dtype=np.int64)
    return int(state.randint(2**30, dtype=np.int64))


def _streams(seed: int, count: int) -> list[np.random.Generator]:
    """The generators ``pymc.pytensorf.reseed_rngs(rngs, seed)`` gives ``count`` rngs, in order."""
    return [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(count)]


class ReusableAdvi:
    """A prepared PyMC ADVI inference (after ``fit(0)``) that ``reseed`` resets for a new fit.

    ``rngs``: the step function's random generator variables in the order PyMC seeded them,
    found by matching their states to the streams of the build seed.
    """

    def __init__(self, inference):
        self.inference = inference
        step = inference.state.step
        shared = step.get_shared()
        self.rngs_unordered = [v for v in shared if isinstance(v.type, RandomGeneratorType)]
        self.values = [(v, v.get_value(borrow=False)) for v in shared if not isinstance(v.type, RandomGeneratorType)]
        expected = _streams(_step_seed(BUILD_SEED), len(self.rngs_unordered))
        order = []
        for rng in self.rngs_unordered:
            state = rng.get_value(borrow=True).bit_generator.state
            matches = [i for i, g in enumerate(expected) if g.bit_generator.state == state]
            if len(matches) != 1:
                raise RuntimeError("PyMC's ADVI step function was not seeded as this module expects "
                                   "(pymc.variational.opvi.step_function)")
            order.append(matches[0])
        self.order = order
        self.state = inference.state

    def reseed(self, seed: int):
        """The inference as ``Inference(random_seed=seed)`` followed by ``fit(0)`` leaves it."""
        inference = self.inference
        for variable, value in self.values:
            variable.set_value(value.copy(), borrow=True)
        streams = _streams(_step_seed(seed), len(self.rngs_unordered))
        for rng, index in zip(self.rngs_unordered, self.order):
            rng.set_value(streams[index], borrow=True)
        random_state = np.random.RandomState(seed)
        random_state.randint(2**30, dtype=np.int64)
        random_state.randint(2**30, dtype=np.int64)
        inference.approx.rng.set_state(random_state.get_state())
        inference.hist = np.asarray(())
        inference.approx.hist = inference.hist
        inference.state = self.state
        return inference


def advi(description: dict, build: Callable[[int], Any], seed: int):
    """The ADVI inference ``build(BUILD_SEED)`` makes (through the function store, under
    ``description``, which must not name the seed), reset for ``seed``."""
    def make() -> ReusableAdvi:
        # One step of a throw-away copy compiles the loaded graph's Numba code (see load_or_build).
        inference, _ = load_or_build(description, lambda: build(BUILD_SEED), warm_up=lambda copy: copy.state.step())
        return ReusableAdvi(inference)

    return _ADVI.get_or_make(function_key(description), make).reseed(seed)


def single_path(description: dict, build: Callable[[], Any]):
    """pymc-extras' single-path Pathfinder function (seeded per call), through the function
    store under ``description``, kept in this process."""
    return _PATHFINDER.get_or_make(
        function_key(description),
        lambda: load_or_build(description, build, warm_up=lambda copy: copy(0))[0])
