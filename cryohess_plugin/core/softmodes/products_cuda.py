"""The products of the accumulated Hessian on a CUDA device (:class:`DeviceProducts`).

The device keeps what every product reuses: the half-ring sample directions, the real
harmonics at them (cached within the memory budget, else recomputed per block of
directions on the device), the pose-derivative slices ``U_a``, the pose blocks'
pseudo-inverses, the counts, the shell weights (squared CTFs over the noise) and the ring
weights.  A product uploads
the ``(R, P)`` shell columns and downloads the ``(R, P)`` result (``pose_change``: the
``(D, G, 3)`` rotations) and nothing else.  The kernels are in
:mod:`.kernels.soft_modes_cuda`; the formulas in ``docs/methods/hessian_soft_modes.md``
§2.7.
"""
import numpy as np

from ..kernels import soft_modes_cuda as kernels
from .products import HessianProducts


class DeviceProducts(HessianProducts):
    """The products as ``numba.cuda`` kernels on device-resident state (module docstring)."""

    def __init__(self, samples, harmonics, block, cache, shell_weights, counts, ring_weights):
        super().__init__(samples, harmonics, block)
        self.n_even = harmonics.n_even
        self.n_odd = harmonics.degrees.size - harmonics.n_even
        self.max_degree = int(harmonics.degrees.max())
        self.n_shells = shell_weights.shape[1]
        self.n_groups = shell_weights.shape[0]
        self._samples = kernels.to_device(samples.reshape(-1, 3))
        self._table = kernels.to_device(harmonics.column_table(), np.int64)
        self._shell_weights = kernels.to_device(shell_weights)
        self._counts = kernels.to_device(counts)
        self._ring_weights = kernels.to_device(ring_weights)
        rows = self.block * self.half
        self._scratch = None
        self._cache = None
        if cache:
            self._cache = [self._evaluate(start, None) for start in self._starts()]
        else:
            self._scratch = (kernels.device_array((rows, self.n_even)),
                             kernels.device_array((rows, self.n_odd)))
        self._v = (kernels.device_array((rows, self.n_shells)),
                   kernels.device_array((rows, self.n_shells)))
        self._overlap = kernels.device_array((self.block, 3, self.n_shells))
        self._change = kernels.device_array((self.block, self.n_groups, 3))
        self._derivatives = self._pinv = None

    def _evaluate(self, start, into):
        """Harmonics of the block at ``start``, into the scratch ``into`` or new arrays."""
        stop = min(start + self.block, self.n_directions)
        rows = (stop - start) * self.half
        if into is None:
            into = (kernels.device_array((rows, self.n_even)),
                    kernels.device_array((rows, self.n_odd)))
        even, odd = into[0][:rows], into[1][:rows]
        samples = self._samples[start * self.half:stop * self.half]
        kernels.evaluate_harmonics(samples, self.max_degree, self._table, even, odd)
        return even, odd

    def _blocks(self):
        for k, start in enumerate(self._starts()):
            stop = min(start + self.block, self.n_directions)
            block = self._cache[k] if self._cache is not None else self._evaluate(
                start, self._scratch)
            yield start, stop, block

    def _slice(self, block, even_columns, odd_columns, rows):
        v_re, v_im = self._v[0][:rows], self._v[1][:rows]
        kernels.slice_product(block[0], even_columns, v_re)
        kernels.slice_product(block[1], odd_columns, v_im)
        return v_re, v_im

    def _upload_columns(self, columns):
        return (kernels.to_device(columns[:, :self.n_even]),
                kernels.to_device(columns[:, self.n_even:]))

    def _stacked_slices(self, columns):
        """Host ``(Re V, Im V)`` ``(D, Q/2, k)`` of stacked shell columns ``(k, P)``."""
        even_columns, odd_columns = self._upload_columns(columns)
        k = columns.shape[0]
        shape = (-1, self.half, k)
        real, imag = [], []
        for start, stop, block in self._blocks():
            rows = (stop - start) * self.half
            v_re = kernels.device_array((rows, k))
            v_im = kernels.device_array((rows, k))
            kernels.slice_product(block[0], even_columns, v_re)
            kernels.slice_product(block[1], odd_columns, v_im)
            real.append(v_re.copy_to_host().reshape(shape))
            imag.append(v_im.copy_to_host().reshape(shape))
        return np.concatenate(real), np.concatenate(imag)

    def mode_slices(self, modes):
        # All modes in one pass of GEMMs, then cut into the host's blocks of directions.
        count, shells = modes.shape[:2]
        real, imag = self._stacked_slices(modes.reshape(count * shells, -1))  # (D, Q/2, k R)
        shape = (self.n_directions, self.half, count, shells)
        real, imag = real.reshape(shape), imag.reshape(shape)
        for start in self._starts():
            where = slice(start, start + self.block)
            yield where, real[where], imag[where]

    def set_poses(self, derivatives, pinv):
        self._derivatives = tuple(kernels.to_device(u) for u in derivatives)
        self._pinv = kernels.to_device(pinv)

    def _pose(self, start, stop, mode, v_re, v_im):
        shape = (stop - start, self.half, self.n_shells)
        u_re, u_im = self._derivatives
        kernels.pose_algebra(start, mode, v_re.reshape(shape), v_im.reshape(shape), u_re, u_im,
                             self._pinv, self._counts, self._shell_weights, self._ring_weights,
                             self._overlap, self._change)

    def _matvec(self, columns, implicit_poses):
        even_columns, odd_columns = self._upload_columns(columns)
        out_even = kernels.to_device(np.zeros((self.n_shells, self.n_even)))
        out_odd = kernels.to_device(np.zeros((self.n_shells, self.n_odd)))
        mode = kernels.IMPLICIT_POSES if implicit_poses else kernels.FIXED_POSES
        for start, stop, block in self._blocks():
            rows = (stop - start) * self.half
            v_re, v_im = self._slice(block, even_columns, odd_columns, rows)
            self._pose(start, stop, mode, v_re, v_im)
            kernels.adjoint_product(v_re, block[0], out_even)
            kernels.adjoint_product(v_im, block[1], out_odd)
        return np.concatenate([out_even.copy_to_host(), out_odd.copy_to_host()], axis=1)

    def matvec(self, columns, implicit_poses):
        return np.stack([self._matvec(c, implicit_poses) for c in columns])

    def _pose_change(self, columns):
        even_columns, odd_columns = self._upload_columns(columns)
        parts = []
        for start, stop, block in self._blocks():
            rows = (stop - start) * self.half
            v_re, v_im = self._slice(block, even_columns, odd_columns, rows)
            self._pose(start, stop, kernels.POSE_CHANGE, v_re, v_im)
            parts.append(self._change[:stop - start].copy_to_host())
        return np.concatenate(parts)

    def pose_change(self, columns):
        return np.stack([self._pose_change(c) for c in columns])
