"""Gaussian posterior over a map's Fourier transform with known poses (Ullrich et al. 2019).

Model (``docs/methods/fourier_slice_posterior.md`` §2, §4, in the
conventions of :mod:`.fourier` and :mod:`.projector`)::

    X_n(k) = c_n(k) exp(-2 pi i k.t_n / D) V(R_n^T (kx, ky, 0)) + N_n(k)

* ``V`` is the centred, non-unitary transform of the map on the *unpadded*
  ``D^3`` grid, read by trilinear interpolation (a :class:`.SliceOperator`
  with ``padding=1``, ``interpolation="linear"``): the paper's model, in which every
  grid coefficient is a parameter.  The map is ``ifft(V)`` divided by the
  kernel's deapodisation, as :meth:`.SliceOperator.volume_to_grid` inverts.
* ``N`` is Gaussian noise, independent between coefficients, with a power
  ``E|N(k)|^2 = D^2 sigma^2(s)`` per image shell ``s = round(|k|)``: coloured
  noise, estimated per shell by EM; white real-space noise of variance
  ``sigma^2`` per pixel is the special case of one ``sigma^2`` for every shell.
  Images are used on the half plane
  (:class:`.fourier.HalfPlane`, each independent coefficient once, the real
  DC with weight 1/2) inside a disc whose taps stay in ``(-D/2, D/2)``, so
  the Hermitian mirror of every tap is on the grid.
* Prior: ``V`` Hermitian (a real map), ``E|V_j|^2 = s0^2(shell)``.

Posterior (mean field = diagonal, ``fourier_slice_posterior.md`` §4.2; ``Var`` is the complex
variance ``E|V_j - mu_j|^2``), with the likelihood's weights ``W'_k = W_k / (D^2
sigma^2(s_k))``::

    (herm(A^H W' A) + 1 / s0^2) mu = herm(A^H W' X)
    Var_j = 1 / (1 / s0^2 + S'_j),   S'_j = sum_n sum_k c^2 W'_k w_nkj^2

where ``herm(B) = B + conj(mirror(B))`` folds the gradient onto Hermitian
maps and ``S'`` counts both ``k`` and ``-k`` (the sampling density).  A central
slice samples the voxels of its own shell, so ``S'_j = S_j / (D^2 sigma^2)`` with
the sigma of the voxel's shell and ``S = sum c^2 W w^2``; in the paper's unitary
units per real component this is ``1 / (1/s0^2 + 2 D S / sigma^2)`` (§4.2).  The mean
is the exact MAP (conjugate gradients); the variance ignores the correlations
interpolation creates, as mean-field VI does.  Noise (per shell or white) and
per-shell prior variances are estimated by EM.

Resolution from one fit: the paper's ``alpha(f) = sum |mu|^2 / sum Var``
uses the mean-field ``Var``, which misses the noise the interpolation
correlations put into the mean and the deapodisation of the map, and
crosses the half-map FSC thresholds 3-4 shells early.  The curve that tracks
the FSC of mean maps propagates noise draws through the exact MAP solve
(:func:`propagate_noise`, one CG solve per draw) and takes signal over noise
power of the mean map per shell (:meth:`FourierPosterior.shell_snr`).

The variational fit (:func:`fit_variational`) minimises the minibatch ELBO
of the paper's eq. (15) with the closed-form expected likelihood of §4.2 (no
reparameterisation noise, §4.6): a natural-gradient step on the precision and a
preconditioned, Polyak-averaged gradient step on the mean.
"""
import numpy as np

from ..errors import InvalidDataError, ShapeError
from ..fourier import hermitian_fold, shell_average, shell_sums
from ..progress import Reporter
from .problem import TINY, expand_shells
from .result import FourierPosterior


#: How the noise is estimated when it is not given: one ``sigma^2`` per image shell
#: (coloured noise) or one for every shell (white noise).
NOISE_MODELS = ("per_shell", "white")


def _conjugate_gradients(apply, rhs, preconditioner, start, iterations, tolerance,
                         report=None, label="CG"):
    """Preconditioned CG for a real-linear SPD ``apply`` under ``Re <a, b>``."""
    x = start.copy()
    # A cold start needs no pass of the operator: A 0 = 0.
    r = rhs - apply(x) if x.any() else rhs.copy()
    z = preconditioner * r
    p = z.copy()
    rz = np.vdot(r, z).real
    norm = np.sqrt(np.vdot(rhs, rhs).real) or 1.0
    residuals = []
    for _ in range(iterations):
        residuals.append(np.sqrt(np.vdot(r, r).real) / norm)
        if residuals[-1] < tolerance:
            break
        if report is not None:
            report.every(f"  {label} iteration {len(residuals)}: relative residual "
                         f"{residuals[-1]:.3g}")
        q = apply(p)
        step = rz / np.vdot(p, q).real
        x += step * p
        r -= step * q
        z = preconditioner * r
        rz_new = np.vdot(r, z).real
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, residuals


def _check_variance(value, name):
    value = np.asarray(value, dtype=np.float64)
    if not (np.isfinite(value).all() and (value > 0).all()):
        raise InvalidDataError(f"{name} must be positive and finite, got {value}")
    return value


def _noise_value(noise_variance):
    """A checked ``sigma^2``: a float (white noise) or a float64 array per shell."""
    value = _check_variance(noise_variance, "noise_variance")
    return float(value) if value.ndim == 0 else value


def _white(noise_variance):
    return np.ndim(noise_variance) == 0


def _noise_text(noise_variance):
    """``sigma^2`` for a progress line: one number, or its range over the shells."""
    if _white(noise_variance):
        return f"noise variance {noise_variance:.4g}"
    shells = np.asarray(noise_variance)
    return (f"noise variance {shells[1]:.4g} (shell 1) to {shells[-2]:.4g} "
            f"(shell {shells.size - 2})")


def _per_shell(problem, power):
    """Per-shell ``sigma^2`` from the per-shell power ``E|N|^2`` (NaN where a shell has no
    points: shells beyond the model's disc take the last measured one).

    Shell 0 holds only the DC, one real number per image that the particles'
    normalisation sets (often to zero): it takes the noise of shell 1, so that a DC
    fitted exactly cannot drive its noise, and its weight, to extremes.
    """
    power = np.asarray(power, dtype=np.float64).copy()
    for shell in range(1, power.size):
        if not np.isfinite(power[shell]):
            power[shell] = power[shell - 1]
    power[0] = power[1]
    return np.maximum(power, max(power.max() * 1e-12, TINY)) / problem.box ** 2


def initial_noise_variance(problem, noise_model="white"):
    """Upper bound of ``sigma^2``: the mean power of the data coefficients (signal
    included), over every shell (``"white"``) or per image shell (``"per_shell"``)."""
    if noise_model == "per_shell":
        return _per_shell(problem, problem.shell_residual_power(None))
    total = 0.0
    for p in problem.batches():
        total += float(np.sum(np.abs(problem.spectra_batch(p)) ** 2 @ problem.sample_weight))
    return total / (problem.n_particles * problem.box ** 2 * problem.sample_weight.sum())


def estimate_noise_variance(problem, posterior):
    """EM update of ``sigma^2`` (``fourier_slice_posterior.md`` §4.3): mean ``E|X - A V|^2 / D^2``
    per real coefficient."""
    power = problem.residual_power(posterior.mean, posterior.variance)
    return float(power.sum() / (problem.box ** 2 * problem.n_particles
                                * problem.sample_weight.sum()))


def estimate_noise_spectrum(problem, posterior):
    """EM update of the per-shell ``sigma^2(s)`` (``fourier_slice_posterior.md`` §4.3): the
    expected residual power ``E|X - A V|^2 / D^2`` under the posterior, per image shell."""
    return _per_shell(problem, problem.shell_residual_power(posterior.mean,
                                                            posterior.variance))


def _estimate_noise(problem, posterior, noise_model):
    if noise_model == "per_shell":
        return estimate_noise_spectrum(problem, posterior)
    return estimate_noise_variance(problem, posterior)


def _weighted_terms(problem, noise_variance, cache, passes):
    """Data term ``herm(A^H W' X)``, sampling density ``S'`` and gridding weights
    ``herm(A^H W' c^2)`` under the noise ``noise_variance``.  Under white noise they are
    the terms of ``W`` divided by ``D^2 sigma^2``, computed once in ``cache``; coloured
    noise weights every shell differently, so each new spectrum takes a pass for each."""
    if _white(noise_variance):
        if "white" not in cache:
            cache["white"] = (problem.data_term(), problem.sampling_density(),
                              problem.row_sums())
            _count(passes, "adjoint", 2)
            _count(passes, "density")
        scale = problem.box ** 2 * noise_variance
        return tuple(term / scale for term in cache["white"])
    weights = problem.noise_weights(noise_variance)
    _count(passes, "adjoint", 2)
    _count(passes, "density")
    return (problem.data_term(weights=weights), problem.sampling_density(weights=weights),
            problem.row_sums(weights=weights))


def estimate_prior_variance(posterior):
    """EM update of the per-shell prior: shell mean of ``|mu|^2 + Var`` (shells 0..D/2)."""
    mean_power = shell_average(np.abs(posterior.mean) ** 2 + posterior.variance)
    return np.maximum(mean_power, mean_power.max() * 1e-12)


def noise_spectra(problem, part, rng, noise_variance):
    """Half-plane spectra of noise of the data's noise model, ``(n, m)``.

    Independent on the half plane with ``E|N(k)|^2 = D^2 sigma^2(shell of k)``
    (complex) and a real DC of the same variance; for white noise, exactly the
    transform of white real-space noise of variance ``sigma^2``.
    """
    count, m = problem._count(part), problem.half_plane.size
    scale = problem.point_noise(noise_variance)
    values = (rng.standard_normal((count, m)) + 1j * rng.standard_normal((count, m))) * np.sqrt(
        scale / 2)
    dc = problem.sample_weight < 1.0
    values[:, dc] = rng.standard_normal((count, int(dc.sum()))) * np.sqrt(scale[dc])
    return values


#: Relative CG residual of the noise probes.  A probe's per-shell power has a
#: Monte-Carlo error of ``1 / sqrt(c / 2)`` already; at 128 px (2000 particles,
#: SNR 0.05) stopping at 3e-3 instead of 1e-4 changes it by at most 1.1 % in any
#: shell, under a tenth of that error, and takes 10 CG iterations instead of 18.
PROBE_TOLERANCE = 3e-3


def propagate_noise(problem, posterior, probes=1, rng=0, cg_iterations=60,
                    tolerance=PROBE_TOLERANCE, rows=None, progress=None):
    """Per-shell power of the noise in the posterior-mean map (map domain).

    The MAP mean is linear in the data, ``mu = M X`` with ``M = (A^H W' A +
    1/s0^2)^-1 A^H W'`` (Hermitian-folded, ``W'`` the noise-weighted sample
    weights of the module docstring), so its noise is ``M N``.  Each probe draws
    ``N`` from the noise model (:func:`noise_spectra`), solves for ``M N`` with the
    same CG as the fit
    and takes the power of its map per shell (:meth:`FourierPosterior.map_shell_power`);
    a shell of ``c`` coefficients gets a relative error of about
    ``1 / sqrt(c / 2)`` per probe.  Unlike the mean-field ``Var`` this keeps the
    correlations interpolation creates and the deapodisation of the map.

    :param problem: :class:`PosteriorProblem` the posterior was fitted to.
    :param posterior: :class:`FourierPosterior` (its noise and prior define ``M``).
    :param probes: number of noise draws averaged.
    :param rng: seed or generator of the draws.
    :param tolerance: relative CG residual of each probe's solve
        (:data:`PROBE_TOLERANCE`: well inside the probe's Monte-Carlo error).
    :param rows: the gridding weights under the posterior's noise,
        ``row_sums(weights=noise_weights(noise_variance))``, if already computed.
    :param progress: :class:`.progress.Progress` events: each probe's CG iterations
        and residual (and long solves' residuals every 30 s), or None.
    :returns: ``(D // 2 + 1,)`` float64.
    """
    return _propagate_noise(problem, posterior, probes, rng, cg_iterations, tolerance, rows,
                            progress, {})


def _propagate_noise(problem, posterior, probes, rng, cg_iterations, tolerance, rows, progress,
                     passes):
    """:func:`propagate_noise`, counting its passes over the data in ``passes``."""
    if posterior.box != problem.box:
        raise ShapeError(f"posterior box {posterior.box} differs from the particle box "
                         f"{problem.box}; use particles and posterior of one box size")
    if probes < 1:
        raise ValueError(f"need at least one noise probe, got {probes}")
    rng = np.random.default_rng(rng)
    weights = problem.noise_weights(posterior.noise_variance)
    prior = posterior.prior_variance
    if rows is None:
        rows = problem.row_sums(weights=weights)
        _count(passes, "adjoint")
    preconditioner = 1.0 / (1.0 / prior + rows)
    apply = _normal_equations(problem, weights, prior, passes)
    report = Reporter(progress)
    power = np.zeros(problem.box // 2 + 1)
    for probe in range(int(probes)):
        rhs = np.zeros((problem.box,) * 3, np.complex128)
        for p in problem.batches():
            problem._scatter(noise_spectra(problem, p, rng, posterior.noise_variance)
                             .astype(problem.operator.complex_dtype), p, rhs, weights)
        _count(passes, "adjoint")
        rhs = hermitian_fold(rhs)
        noise, residuals = _conjugate_gradients(
            apply, rhs, preconditioner, np.zeros_like(rhs), cg_iterations, tolerance,
            report, "noise probe CG")
        power += posterior.map_shell_power(noise)
        report(f"Noise probe {probe + 1}/{int(probes)}: {len(residuals)} CG iterations, "
               f"relative residual {residuals[-1] if residuals else 0.0:.2g}")
    return power / probes


def _count(passes, kind, count=1):
    passes[kind] = passes.get(kind, 0) + count


def _normal_equations(problem, weights, prior, passes):
    """``g -> herm(A^H W' A g) + g / s0^2`` with the noise weights ``W'``, counting its
    passes."""
    inverse_prior = 1.0 / prior

    def apply(grid):
        _count(passes, "normal")
        out = problem.normal(grid, weights=weights)
        out += grid * inverse_prior
        return out
    return apply


#: Relative CG residual of the EM rounds before the last: their means only
#: feed the next noise and prior estimates, and the last round (warm-started)
#: solves to the fit's tolerance.
EM_TOLERANCE = 1e-2


def fit_closed_form(problem, noise_variance=None, prior_variance=None, em_iterations=4,
                    cg_iterations=30, tolerance=1e-4, noise_probes=1, rng=0,
                    noise_model="per_shell", progress=None):
    """Mean-field posterior in closed form: MAP mean by CG, variance from ``S'``.

    :param problem: :class:`PosteriorProblem`.
    :param noise_variance: ``sigma^2`` per pixel, a number (white noise) or one per
        image shell ``0 .. D/2``; or None to estimate it (EM) as ``noise_model`` says.
    :param prior_variance: scalar or per-shell ``(D // 2 + 1,)`` ``s0^2``, or
        None to estimate it per shell (EM, empirical Bayes).
    :param noise_model: one of :data:`NOISE_MODELS`, how an estimated noise varies:
        ``"per_shell"`` (coloured noise) or ``"white"``.
    :param em_iterations: EM rounds when something is estimated.
    :param cg_iterations: most CG iterations per round.
    :param tolerance: relative CG residual to stop at.
    :param noise_probes: noise draws propagated through the final solve
        (:func:`propagate_noise`) for the resolution curve; 0 skips them
        (one CG solve each) and leaves the mean-field curve.
    :param rng: seed of the noise probes (solved to the looser of ``tolerance``
        and :data:`PROBE_TOLERANCE`: their Monte-Carlo error dominates).
    :param progress: :class:`.progress.Progress` events: after each EM round the
        noise variance, the prior's range over shells, the CG iterations and
        residual (and a long solve's residual every 30 s), or None.
    :returns: :class:`FourierPosterior`; its history holds the noise variance
        and CG residuals of every round and ``passes``, the passes over the
        data by kind: ``normal`` (forward and adjoint of every particle: CG
        iterations), ``adjoint`` (data term, gridding weights, probe
        right-hand sides), ``forward`` (EM residual power), ``density``.
    """
    if noise_model not in NOISE_MODELS:
        raise ValueError(f"noise_model must be one of {NOISE_MODELS}, got {noise_model!r}")
    box = problem.box
    report = Reporter(progress)
    estimate_noise = noise_variance is None
    estimate_prior = prior_variance is None
    passes = {}
    if estimate_noise:
        noise = initial_noise_variance(problem, noise_model)
    else:
        noise = _noise_value(noise_variance)
        problem.point_noise(noise)  # refuses a per-shell noise of the wrong shape
    cache = {}
    data, density, rows = _weighted_terms(problem, noise, cache, passes)
    report(f"Data term, sampling density and gridding weights of {problem.n_particles} "
           f"particles ({problem.n_particles * problem.half_plane.size} coefficients)")
    if estimate_prior:
        # Start from the power of the gridded data: an over-estimate EM pulls down.
        direct = np.abs(data) ** 2 / np.maximum(rows, 1e-3 * rows.max()) ** 2
        sampled = rows > 1e-3 * rows.max()
        prior_shell = np.maximum(shell_sums(np.where(sampled, direct, 0.0))
                                 / np.maximum(shell_sums(sampled.astype(float)), 1), TINY)
        prior_shell = np.maximum(prior_shell, prior_shell.max() * 1e-12)
    else:
        prior_shell = _check_variance(prior_variance, "prior_variance")
    rounds = em_iterations if (estimate_noise or estimate_prior) else 1
    mean = np.zeros((box,) * 3, np.complex128)
    history = {"noise_variance": [], "cg_residuals": [], "passes": passes}
    for round_ in range(rounds):
        if round_:
            data, density, rows = _weighted_terms(problem, noise, cache, passes)
        prior = expand_shells(prior_shell, box)
        variance = 1.0 / (1.0 / prior + density)
        preconditioner = 1.0 / (1.0 / prior + rows)
        mean, residuals = _conjugate_gradients(
            _normal_equations(problem, problem.noise_weights(noise), prior, passes), data,
            preconditioner, mean, cg_iterations,
            tolerance if round_ == rounds - 1 else max(tolerance, EM_TOLERANCE), report)
        posterior = FourierPosterior(mean, variance, prior, noise, problem.interpolation, history)
        # As the result file keeps it: per-shell noise as a list.
        history["noise_variance"].append(noise if _white(noise) else noise.tolist())
        history["cg_residuals"].append(residuals)
        shells = np.atleast_1d(prior_shell)
        report(f"EM round {round_ + 1}/{rounds}: {_noise_text(noise)}, prior "
               f"{shells[0]:.3g} (shell 0) to {shells[-1]:.3g} (shell {shells.size - 1}), "
               f"{len(residuals)} CG iterations, relative residual "
               f"{residuals[-1] if residuals else 0.0:.2g}")
        if estimate_noise and round_ < rounds - 1:
            noise = _estimate_noise(problem, posterior, noise_model)
            _count(passes, "forward")
        if estimate_prior and round_ < rounds - 1:
            prior_shell = estimate_prior_variance(posterior)
    if noise_probes:
        posterior.noise_power = _propagate_noise(problem, posterior, noise_probes, rng,
                                                 max(cg_iterations, 60),
                                                 max(tolerance, PROBE_TOLERANCE), rows,
                                                 progress, passes)
    return posterior


def fit_variational(problem, noise_variance, prior_variance, batch_size=64, epochs=20,
                    step=0.3, rng=0, start=None, progress=None):
    """Stochastic variational fit of the mean-field posterior in minibatches (paper eq. (15)).

    Each step uses the minibatch ``B`` scaled by ``N / |B|`` and the
    closed-form expected likelihood (``docs/methods/fourier_slice_posterior.md`` §4.2,
    §4.6):

    * precision ``lambda = 1 / Var``: natural-gradient step
      ``lambda <- (1 - r) lambda + r (1/s0^2 + (N/|B|) S'_B)``
      with ``r = 1 / t`` (an exact running average of the minibatch densities, under
      the noise weights ``W'`` of the module docstring);
    * mean: ``mu <- mu - step * P * grad`` with the gridding-weight
      preconditioner ``P`` (a minibatch estimate averaged the same way), and
      Polyak averaging over the second half of the steps.

    :param noise_variance: ``sigma^2`` per pixel, a number or one per image shell
        (e.g. from :func:`fit_closed_form`).
    :param prior_variance: scalar, per-shell ``(D//2+1,)`` or ``(D, D, D)`` ``s0^2``.
    :param batch_size: particles per minibatch.
    :param epochs: passes over the data.
    :param step: mean step size (stable below about 1 with this preconditioner).
    :param rng: seed of the minibatch order.
    :param start: starting mean grid, or None for zero.
    :param progress: :class:`.progress.Progress` events: after each epoch its ELBO
        estimate and the change from the previous epoch, or None.
    :returns: :class:`FourierPosterior`; history holds the number of steps and
        ``elbo``, one estimate per epoch: the epoch's average of the minibatch
        expected log-likelihoods (scaled by ``N / |B|``, at the mean and
        variance of their step) minus ``KL(q || prior)`` at the epoch's end.
        Only the minibatches are read: one epoch is one pass over the data.
    """
    box = problem.box
    noise_variance = _noise_value(noise_variance)
    noise = problem.point_noise(noise_variance)
    weights = problem.noise_weights(noise_variance)
    prior_variance = _check_variance(prior_variance, "prior_variance")
    prior = (prior_variance if prior_variance.shape == (box,) * 3
             else expand_shells(prior_variance, box))
    rng = np.random.default_rng(rng)
    n = problem.n_particles
    batch_size = min(int(batch_size), n)
    mean = np.zeros((box,) * 3, np.complex128) if start is None else start.astype(np.complex128)
    precision = 1.0 / prior
    rows_average = np.zeros((box,) * 3)
    average = np.zeros_like(mean)
    n_averaged = 0
    steps_per_epoch = n // batch_size
    total = epochs * steps_per_epoch
    dc = problem.sample_weight < 1.0
    # Normalising constant of the Gaussian likelihood per particle (complex and real DC terms).
    constant = -(np.sum(np.log(np.pi * noise[~dc])) + 0.5 * np.sum(np.log(2 * np.pi * noise[dc])))
    report = Reporter(progress)
    elbos = []
    t = 0
    for epoch in range(epochs):
        order = rng.permutation(n)
        expected = 0.0
        for b in range(steps_per_epoch):
            t += 1
            part = np.sort(order[b * batch_size:(b + 1) * batch_size])
            factor = n / part.size
            rate = 1.0 / t
            # The minibatch's CTF, evaluated once for its four operators.
            ctf = problem.batch_ctf(part)
            density = problem.sampling_density(part, weights=weights, ctf=ctf)
            difference = (problem.forward(mean.astype(problem.operator.complex_dtype), part, ctf)
                          - problem.spectra_batch(part))
            # sum W' E|X - A V|^2 under q: the weighted residual power plus
            # sum_j Var_j S'_B,j / 2 (S' counts k and -k, Var is Hermitian-symmetric).
            power = (np.sum(np.abs(difference) ** 2 @ weights)
                     + 0.5 * np.sum(density / precision))
            expected += factor * (part.size * constant - power)
            precision = (1 - rate) * precision + rate * (1.0 / prior + factor * density)
            rows_average = (1 - rate) * rows_average + rate * factor * problem.row_sums(
                part, weights=weights, ctf=ctf)
            residual = problem.adjoint(difference, part, weights=weights, ctf=ctf)
            gradient = factor * residual + mean / prior
            mean = mean - step * gradient / (1.0 / prior + rows_average)
            if t > total // 2:
                n_averaged += 1
                average += (mean - average) / n_averaged
        if steps_per_epoch:
            variance = 1.0 / precision
            kl = 0.5 * np.sum(np.log(prior / variance) + (variance + np.abs(mean) ** 2) / prior
                              - 1.0)
            elbos.append(float(expected / steps_per_epoch - kl))
            change = "" if len(elbos) < 2 else f" (change {elbos[-1] - elbos[-2]:+.4g})"
            report(f"Epoch {epoch + 1}/{epochs}: ELBO {elbos[-1]:.8g}{change}, "
                   f"{steps_per_epoch} minibatches of {batch_size}")
    history = {"steps": t, "batch_size": batch_size, "elbo": elbos}
    return FourierPosterior(average if n_averaged else mean, 1.0 / precision, prior,
                            noise_variance, problem.interpolation, history)


#: The fits :func:`fit_posterior` offers.
FIT_METHODS = ("closed_form", "variational")


def estimation_subset(count, size):
    """Rows of at most ``size`` particles spread evenly over ``count``."""
    return np.unique(np.linspace(0, count - 1, min(count, size)).astype(int))


def fit_posterior(problem, noise_variance=None, prior_variance=None, method="closed_form",
                  em_iterations=4, batch_size=64, epochs=20, estimation_particles=2000,
                  noise_model="per_shell", progress=None):
    """The posterior by the closed form or the minibatch variational fit.

    The closed form estimates what is not given by EM (:func:`fit_closed_form`). The
    variational fit needs the noise and the prior: what is not given comes from a
    closed-form fit to ``estimation_particles`` particles spread evenly over the set
    (:func:`estimation_subset`, no noise probes); afterwards one noise probe is
    propagated (:func:`propagate_noise`), so that its single-fit resolution curve is the
    closed form's (``docs/methods/fourier_slice_posterior.md`` §4.4, §4.6).

    :param noise_variance: ``sigma^2`` per pixel (a number, or one per image shell), or
        None to estimate it.
    :param prior_variance: scalar or per-shell ``s0^2``, or None to estimate it per shell.
    :param method: one of :data:`FIT_METHODS`.
    :param noise_model: how an estimated noise varies, one of :data:`NOISE_MODELS`.
    :param em_iterations: EM rounds of the closed form when something is estimated.
    :param batch_size, epochs: of the variational fit (:func:`fit_variational`).
    :param estimation_particles: particles of the variational fit's closed-form estimate.
    :param progress: :class:`.progress.Progress` events of the fits, or None.
    :returns: :class:`FourierPosterior`.
    """
    if method not in FIT_METHODS:
        raise ValueError(f"method must be one of {FIT_METHODS}, got {method!r}")
    if method == "closed_form":
        return fit_closed_form(problem, noise_variance, prior_variance,
                               em_iterations=em_iterations, noise_model=noise_model,
                               progress=progress)
    if noise_variance is None or prior_variance is None:
        subset = estimation_subset(problem.n_particles, estimation_particles)
        Reporter(progress)(f"Noise and prior from a closed-form fit to {len(subset)} particles")
        estimate = fit_closed_form(problem.subset(subset), noise_variance, prior_variance,
                                   em_iterations=em_iterations, noise_probes=0,
                                   noise_model=noise_model, progress=progress)
        noise_variance, prior_variance = estimate.noise_variance, estimate.prior_variance
    posterior = fit_variational(problem, noise_variance, prior_variance, batch_size=batch_size,
                                epochs=epochs, progress=progress)
    posterior.noise_power = propagate_noise(problem, posterior, progress=progress)
    return posterior


def half_sets(count):
    """Rows of the two half sets of ``count`` particles: alternate particles."""
    rows = np.arange(count)
    return rows[0::2], rows[1::2]


def log_likelihood(problem, posterior):
    """Held-out log-likelihood of every particle under the posterior predictive.

    The predictive of coefficient ``k`` is Gaussian with mean ``A mu`` and
    variance ``D^2 sigma^2(shell of k) + c^2 sum w^2 Var`` (diagonal: correlations between
    coefficients are ignored); complex coefficients count
    ``-|r|^2/v - log(pi v)``, the real DC ``-r^2/(2v) - log(2 pi v)/2``.  The
    sum runs over the model's frequency disc, so values compare between
    particles and posteriors, not with other image models.

    :returns: ``(n,)`` float64.
    """
    if posterior.box != problem.box:
        raise ShapeError(f"posterior box {posterior.box} differs from the particle box "
                         f"{problem.box}; use particles and posterior of one box size")
    noise = problem.point_noise(posterior.noise_variance)
    dc = problem.sample_weight < 1.0
    out = np.empty(problem.n_particles)
    for p in problem.batches():
        residual = problem._residuals(posterior.mean, p)
        v = noise + problem.gathered_variance(posterior.variance, p)
        complex_terms = -(np.abs(residual) ** 2) / v - np.log(np.pi * v)
        real_terms = -(residual.real ** 2) / (2 * v) - 0.5 * np.log(2 * np.pi * v)
        out[p] = np.where(dc, real_terms, complex_terms).sum(axis=1)
    return out


def held_out_log_likelihood(problem, half_1, half_2):
    """Log-likelihood of every particle under the posterior of the *other* half set.

    :param half_1, half_2: posteriors fitted to the rows :func:`half_sets` gives.
    :returns: ``(n,)`` float64 (:func:`log_likelihood`).
    """
    values = np.empty(problem.n_particles)
    rows_1, rows_2 = half_sets(problem.n_particles)
    values[rows_1] = log_likelihood(problem.subset(rows_1), half_2)
    values[rows_2] = log_likelihood(problem.subset(rows_2), half_1)
    return values
