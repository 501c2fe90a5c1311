"""The soft-mode results on disk: every field of a result dataclass in one npz file.

The file's keys are the dataclass's field names, so a field added to a result is saved
and loaded without a hand-kept list.  Writes go to a temporary file that is renamed, so
a stopped run leaves either the complete file or none.
"""
import dataclasses
import os

import numpy as np

#: Field types stored as 0-d arrays and read back as these Python types.
_SCALARS = (bool, int, float, str)


def save_fields(path, result, **encoded):
    """Write the fields of dataclass instance ``result`` to the npz ``path``.

    :param encoded: ``{field: array}`` for fields that are not arrays or scalars (e.g.
        a tuple of parameter objects as rows); fields whose value is None are left out.
    """
    arrays = {field.name: getattr(result, field.name) for field in dataclasses.fields(result)}
    arrays.update(encoded)
    temporary = path + ".tmp.npz"
    np.savez(temporary, **{name: value for name, value in arrays.items() if value is not None})
    os.replace(temporary, path)


def load_fields(cls, path, skip=(), **decoders):
    """An instance of dataclass ``cls`` from the npz :func:`save_fields` wrote.

    Scalar fields come back as their annotated type; fields missing from the file, or
    named in ``skip``, take their defaults.

    :param decoders: ``{field: function(array) -> value}`` undoing ``encoded``.
    """
    values = {}
    with np.load(path) as stored:
        for field in dataclasses.fields(cls):
            if field.name in skip or field.name not in stored.files:
                continue
            value = stored[field.name]
            if field.name in decoders:
                value = decoders[field.name](value)
            elif field.type in _SCALARS:
                value = field.type(value)
            values[field.name] = value
    return cls(**values)
