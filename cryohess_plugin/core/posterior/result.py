"""The fitted Fourier-slice posterior and the maps, curves and samples it gives."""
from dataclasses import dataclass, field

import numpy as np

from .. import fourier
from ..contrast import MapPolarity, solvent_contrast_weights
from ..errors import InvalidDataError
from ..fourier import hermitian_fold, paired, shell_sums
from ..storage import load_fields, save_fields
from .problem import TINY


@dataclass
class FourierPosterior:
    """Diagonal Gaussian posterior over the ``D^3`` Fourier grid of a map.

    :param mean: complex ``(D, D, D)`` posterior mean ``mu`` (centred layout).
    :param variance: real ``(D, D, D)`` complex variance ``E|V - mu|^2``.
    :param prior_variance: real ``(D, D, D)`` prior ``s0^2`` per coefficient.
    :param noise_variance: noise variance ``sigma^2`` per pixel: a float (white noise)
        or a ``(D // 2 + 1,)`` array, one per image shell (coloured noise,
        ``E|N(k)|^2 = D^2 sigma^2(shell)``).
    :param interpolation: interpolation kernel of the model.
    :param history: fit diagnostics (noise, residuals per iteration).
    :param noise_power: per-shell ``(D // 2 + 1,)`` power of the noise in
        :meth:`mean_map` (map domain, :func:`propagate_noise`), or None.
    """
    mean: np.ndarray
    variance: np.ndarray
    prior_variance: np.ndarray
    noise_variance: object
    interpolation: str = "linear"
    history: dict = field(default_factory=dict)
    noise_power: np.ndarray = None

    @property
    def box(self):
        return self.mean.shape[0]

    def save(self, path):
        """Write the posterior to the ``.npz`` ``path`` (every field, history included)."""
        save_fields(path, self)

    @classmethod
    def load(cls, path):
        """The posterior written by :meth:`save`."""
        return load_fields(cls, path, noise_variance=_noise_from_file)

    @property
    def white_noise(self):
        """Whether the noise is white (one ``sigma^2`` for every shell)."""
        return np.ndim(self.noise_variance) == 0

    def noise_shells(self):
        """``sigma^2`` per image shell ``0 .. D/2`` (the same in every shell for white noise)."""
        return np.broadcast_to(np.asarray(self.noise_variance, dtype=np.float64),
                               (self.box // 2 + 1,)).copy()

    def _deapodization(self):
        d = fourier.deapodization(self.box, self.box, self.interpolation)
        return d[:, None, None] * d[None, :, None] * d[None, None, :]

    def grid_to_map(self, grid):
        """Real map of a Fourier grid (inverse of :meth:`.SliceOperator.volume_to_grid`)."""
        return fourier.centred_ifftn(grid).real / self._deapodization()

    def mean_map(self):
        """Posterior-mean map ``(D, D, D)``, real space."""
        return self.grid_to_map(self.mean)

    def polarity(self):
        """:class:`.contrast.MapPolarity` of :meth:`mean_map`: its contrast against the
        solvent and the posterior standard error of that contrast
        (``docs/methods/fourier_slice_posterior.md`` §4.8).

        The contrast is linear in the map, ``c = sum f map = Re sum_k conj(G_k) V_k / D^3``
        with ``G`` the transform of ``f`` over the deapodisation, so under the diagonal
        posterior its variance is ``sum_k |G_k|^2 Var_k / D^6``.
        """
        weights = solvent_contrast_weights(self.box)
        transform = fourier.centred_fftn(weights / self._deapodization())
        error = np.sqrt(np.sum(np.abs(transform) ** 2 * self.variance)) / self.box ** 3
        return MapPolarity(float(np.sum(weights * self.mean_map())), float(error))

    def relative_variance(self):
        """``Var / s0^2``: 1 where no data constrain the coefficient, near 0 where dense."""
        return self.variance / self.prior_variance

    def map_shell_power(self, grid):
        """Power per shell ``0 .. D/2`` of the map of ``grid``, in the map's own transform.

        The domain of :func:`.fourier.fourier_shell_correlation` of
        :meth:`mean_map` s: the deapodisation (a real-space weight) is applied.
        """
        return shell_sums(np.abs(fourier.centred_fftn(self.grid_to_map(grid))) ** 2)

    def shell_snr(self, method=None):
        """Spectral SNR per shell ``0 .. D/2`` of the posterior-mean map.

        :param method: ``"noise"``: signal over noise power of the mean map,
            both in the map domain, the noise power propagated through the
            exact MAP solve (``noise_power``, :func:`propagate_noise`); the
            signal power is the map's power minus that noise power (clipped
            at 0).  This is the SNR the half-map FSC of mean maps measures.
            ``"mean_field"``: the paper's ``alpha(f) = sum |mu|^2 / sum Var``
            (paper eq. (19), ``docs/methods/fourier_slice_posterior.md`` §4.4) on
            the Fourier grid.  None: ``"noise"`` when
            ``noise_power`` is set, else ``"mean_field"``.

        The mean-field ``alpha`` misjudges the noise of the mean twice: ``Var``
        ignores the correlations interpolation puts into the posterior (the
        true noise of the mean is about 1.5 times larger on the grid and is
        concentrated at the edges of the box in real space), and the
        deapodisation of the map then weights those edges down, so the map
        carries less noise than the grid.  Measured on 1200 particles at
        SNR 0.05, 32 px: the mean-field curve crosses 0.5 / 0.143 at shells
        8 / 12, the half-map FSC at 12 / 15, the ``"noise"`` curve at 12 / 14.
        """
        if method is None:
            method = "mean_field" if self.noise_power is None else "noise"
        if method == "mean_field":
            return shell_sums(np.abs(self.mean) ** 2) / np.maximum(shell_sums(self.variance),
                                                                   TINY)
        if method != "noise":
            raise ValueError(f"method must be 'noise' or 'mean_field', got {method!r}")
        if self.noise_power is None:
            raise InvalidDataError("this posterior has no propagated noise power; fit it with "
                                   "fit_closed_form(noise_probes >= 1) or set noise_power = "
                                   "propagate_noise(problem, posterior)")
        noise = np.maximum(np.asarray(self.noise_power, dtype=np.float64), TINY)
        signal = np.maximum(self.map_shell_power(self.mean) - noise, 0.0)
        return signal / noise

    def resolution_curve(self, half_maps=True, method=None):
        """FSC-like curve from one fit, shells ``0 .. D/2``.

        ``half_maps=True`` gives ``(alpha/2) / (1 + alpha/2)``, comparable with
        the FSC of two half maps (each has half the data, so half the SNR);
        ``False`` gives the paper's ``alpha / (1 + alpha)`` for the full map.
        ``alpha`` is :meth:`shell_snr` of ``method``; the default (``"noise"``
        when the fit propagated noise) tracks the half-map FSC of
        :meth:`mean_map` s.
        """
        alpha = self.shell_snr(method) / (2.0 if half_maps else 1.0)
        return alpha / (1.0 + alpha)

    def curve_shells(self):
        """Shells ``1 .. D/2 - 1`` of the reported resolution curves: the model's
        frequency disc without the DC shell."""
        return np.arange(1, self.box // 2)

    def single_fit_curve(self):
        """``(alpha/2) / (1 + alpha/2)`` (:meth:`resolution_curve`) over :meth:`curve_shells`,
        the curve to compare with a half-map FSC."""
        return self.resolution_curve(half_maps=True)[self.curve_shells()]

    def half_map_fsc(self, other):
        """FSC of the mean maps of this posterior and ``other`` (the two half sets) over
        :meth:`curve_shells`."""
        return fourier.fourier_shell_correlation(self.mean_map(),
                                                 other.mean_map())[self.curve_shells()]

    def sample_grids(self, count, rng=0):
        """``count`` Hermitian Fourier grids drawn from the posterior, ``(count, D, D, D)``."""
        rng = np.random.default_rng(rng)
        std = np.sqrt(self.variance)
        out = np.empty((count,) + self.mean.shape, np.complex128)
        for s in range(count):
            noise = rng.standard_normal(self.mean.shape) + 1j * rng.standard_normal(self.mean.shape)
            # (e + conj(e(-k))) / 2 is Hermitian with E|z|^2 = 1 off the self-conjugate points;
            # the unpaired -D/2 planes (outside the model's disc) keep their mean.
            noise = 0.5 * hermitian_fold(noise * paired(self.box))
            out[s] = self.mean + std * noise
        return out

    def sample_maps(self, count, rng=0):
        """``count`` real maps drawn from the posterior, ``(count, D, D, D)``."""
        return np.stack([self.grid_to_map(g) for g in self.sample_grids(count, rng)])

    def real_space_std(self, count=16, rng=0):
        """Voxel-wise standard deviation of ``count`` posterior samples (real space).

        A diagonal Fourier posterior is stationary in real space apart from
        the deapodisation (``docs/methods/fourier_slice_posterior.md`` §4.5): the map
        mostly shows where the correction amplifies, so read it as a global
        uncertainty level.
        """
        if count < 2:
            raise InvalidDataError(f"need at least 2 samples for a standard deviation, got {count}")
        return np.std(self.sample_maps(count, rng), axis=0, ddof=1)


def _noise_from_file(value):
    """A stored ``noise_variance``: a float for white noise, else the per-shell array."""
    return float(value) if value.ndim == 0 else value
