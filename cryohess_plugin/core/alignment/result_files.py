"""Result files of the aligners: one ``.npz`` per result, written from its dataclass fields."""
import dataclasses
import os

import numpy as np


class SavedFields:
    """``save`` and ``load`` for a result dataclass, built from its fields.

    Every field that is not None becomes one array of the file (a nested
    dataclass, such as search statistics, the tuple of its fields); fields left
    out come back with their defaults.
    """

    def save(self, path, **extra):
        """Write the fields and the caller's ``extra`` arrays (e.g. the particle ids of a
        batch) to the ``.npz`` file ``path``, through a temporary file, so a stopped run
        leaves the complete file or none."""
        arrays = dict(extra)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if dataclasses.is_dataclass(value):
                value = dataclasses.astuple(value)
            arrays[field.name] = np.asarray(value)
        temporary = f"{path}.partial.npz"
        np.savez(temporary, **arrays)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path):
        """The result written by :meth:`save`, and its ``extra`` arrays: ``(result, extra)``."""
        with np.load(path) as data:
            stored = {name: data[name] for name in data.files}
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in stored:
                continue
            array = stored.pop(field.name)
            if dataclasses.is_dataclass(field.type):
                values[field.name] = field.type(*array.tolist())
            elif field.type is tuple:
                values[field.name] = tuple(array.tolist())
            else:
                values[field.name] = array
        return cls(**values), stored
