"""Results on disk: a dataclass's fields as one ``.npz`` file, written whole or not at all.

The file holds one entry per field, named as the field: arrays and numbers as arrays,
strings as string arrays, dicts (fit histories) as JSON text; a field that is None is
left out and reads back as its default.  So a result class gets ``save``/``load`` from
its own field list, and a field added later needs no change here.
"""
import dataclasses
import json
import os

import numpy as np


def _json_value(value):
    """numpy scalars and arrays as the plain numbers and lists JSON holds."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} cannot be stored in a result file")


def save_fields(path, result, **encoded):
    """Write the fields of the dataclass instance ``result`` to the ``.npz`` ``path``.

    The file is written under a temporary name and renamed, so a stopped run leaves
    the complete file or none.

    :param encoded: ``{field: array}`` for fields that are neither arrays, numbers,
        strings nor dicts (e.g. a tuple of parameter objects as rows).
    """
    entries = {}
    for field in dataclasses.fields(result):
        value = encoded.get(field.name, getattr(result, field.name))
        if value is None:
            continue
        entries[field.name] = (np.asarray(json.dumps(value, default=_json_value))
                               if isinstance(value, dict) else np.asarray(value))
    path = os.fspath(path)
    temporary = path + '.tmp.npz'
    np.savez(temporary, **entries)
    os.replace(temporary, path)


def load_fields(cls, path, skip=(), **decoders):
    """The dataclass ``cls`` read from a file of :func:`save_fields`.

    Fields missing from the file, or named in ``skip`` (e.g. map-sized arrays a summary
    does not need), take their defaults.

    :param decoders: ``{field: function(array) -> value}`` undoing ``encoded``.
    """
    with np.load(path) as stored:
        values = {}
        for field in dataclasses.fields(cls):
            if field.name in skip or field.name not in stored.files:
                continue
            value = stored[field.name]
            if field.name in decoders:
                value = decoders[field.name](value)
            elif field.type is dict:
                value = json.loads(str(value))
            elif field.type in (float, int, str, bool):
                value = field.type(value)
            values[field.name] = value
    return cls(**values)


class StoredFields:
    """``save``/``load`` for a result dataclass whose fields need no encoding: every
    field to one ``.npz`` (:func:`save_fields`), read back by :func:`load_fields`."""

    def save(self, path):
        """Write every field to the ``.npz`` ``path``."""
        save_fields(path, self)

    @classmethod
    def load(cls, path):
        """The result written by :meth:`save`."""
        return load_fields(cls, path)
