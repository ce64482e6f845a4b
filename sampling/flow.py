"""ODE and SDE sampling, and ODE log-likelihoods, over a SiT Transport, for any denoise(x, t, **cond).

Time runs as in SiT: noise at t = 0, data at t = 1. Wrap the model with
`classifier_free_guidance` for CFG: one batched forward per evaluation.
"""
import math

import torch
from torchdiffeq import odeint
from tqdm.auto import tqdm

from vlgen.sampling.noise import FiniteCheck, randn_like
from vlgen.core.choices import check_choice
from vlgen.transport import DIFFUSION_FORMS
from vlgen.transport.paths import expand_like
from vlgen.transport.transport import check_output

ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_SOLVERS = ("euler", "midpoint", "heun2", "heun3", "rk4")
SOLVER_ALIASES = {"heun": "heun2"}  # torchdiffeq's name for Heun's second-order method
SDE_METHODS = ("euler", "heun")
LAST_STEPS = (None, "mean", "tweedie", "euler")


def _ode_solver(method):
    name = SOLVER_ALIASES.get(method.lower(), method.lower())
    if name not in ADAPTIVE_SOLVERS + FIXED_SOLVERS:
        raise ValueError(
            f"unknown ODE solver {method!r}: use a torchdiffeq solver, adaptive {ADAPTIVE_SOLVERS} (with atol/rtol) "
            f"or fixed-step {FIXED_SOLVERS + tuple(SOLVER_ALIASES)} (with num_steps)"
        )
    return name


def _check_steps(num_steps, minimum):
    if not isinstance(num_steps, int) or num_steps < minimum:
        raise ValueError(f"num_steps must be an integer >= {minimum}, got {num_steps!r}")


def _evaluator(denoise, transport, cond, bar, finite):
    """model(x, t) -> (output, t as (N,)), checked for shape, watched for finiteness (finite: a
    FiniteCheck), counted on the bar."""

    def evaluate(x, t):
        t_batch = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        output = check_output(denoise(x, t_batch, **cond), x)
        finite.see(output, t)
        bar.update()
        return output, t_batch

    return evaluate


def time_grid(t0, t1, points, shift, dtype, device):
    """points times from t0 to t1, equally spaced, or with shift > 1 closer together near t0 (the
    noise end): SD3's timestep shift, sigma -> shift sigma / (1 + (shift - 1) sigma), applied to
    the grid's position u in [0, 1] (sigma = 1 - u), so that t0 and t1 stay where they are."""
    if shift == 1.0:
        return torch.linspace(t0, t1, points, dtype=dtype, device=device)
    sigma = 1.0 - torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    u = 1.0 - shift * sigma / (1.0 + (shift - 1.0) * sigma)
    return (t0 + (t1 - t0) * u).to(dtype=dtype, device=device)


def _check_shift(shift, method):
    if not shift > 0:
        raise ValueError(f"the time shift must be positive (1: none), got {shift}")
    if shift != 1.0 and method in ADAPTIVE_SOLVERS:
        raise ValueError(f"a time shift places the steps of a fixed-step method; the adaptive {method} places its own: "
                         "use method='euler' or 'heun' with it, or leave the shift at 1")


def _integrate(field, state, t0, t1, method, num_steps, atol, rtol, shift=1.0):
    """The state at t1 of d state / dt = field(t, state) from t0, by torchdiffeq."""
    x = state[0] if isinstance(state, tuple) else state
    if method in FIXED_SOLVERS:
        # Asked for the end state only, over a grid of its own: torchdiffeq then keeps two states, not
        # one per step, and reads one value per step on the host (where the output grid is).
        grid = time_grid(t0, t1, num_steps + 1, shift, x.dtype, x.device)
        times, options = grid[[0, -1]], {"grid_constructor": lambda func, y0, t: grid}
    else:
        # step_t makes the last step land on t1 instead of stepping past it and interpolating back:
        # the model is never evaluated outside the interval it was trained on.
        times = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
        options = {"step_t": times[1:]}
    solution = odeint(field, state, times, method=method, atol=atol, rtol=rtol, options=options)
    return tuple(s[-1] for s in solution) if isinstance(state, tuple) else solution[-1]


def _progress(progress, desc):
    return tqdm(desc=desc, unit="eval", disable=not progress, leave=False)


@torch.no_grad()
def sample_ode(denoise, transport, noise, *, method="dopri5", num_steps=50, atol=1e-6, rtol=1e-3, reverse=False,
               time_shift=1.0, progress=True, **cond):
    """Integrate the probability-flow ODE dx/dt = v(x, t) from noise to data (torchdiffeq).

    Args:
        denoise: the model, denoise(x, t, **cond), t flow times in [0, 1] (1: data).
        transport: a Transport: the path, the prediction and the sampling interval.
        noise: the starting Gaussian noise (with reverse=True: the data to encode).
        method: an adaptive solver ("dopri5", SiT's default, controlled by atol and rtol) or a
            fixed-step one ("euler", "heun", "midpoint", "rk4", ...).
        num_steps: steps of a fixed-step solver (SiT's own code takes num_steps - 1).
        atol: absolute tolerance of an adaptive solver.
        rtol: relative tolerance of an adaptive solver.
        reverse: integrate data -> noise instead (to encode).
        time_shift: > 1 crowds the fixed steps at the noise end (`time_grid`; LightningDiT's 1/0.3).
        progress: show a progress bar of the model calls.
        **cond: passed to denoise on every call, e.g. y=labels.

    Returns:
        Tensor: the end point of the integration.
    """
    method = _ode_solver(method)
    _check_steps(num_steps, 1)
    _check_shift(time_shift, method)
    t0, t1 = transport.interval(reverse=reverse)
    finite = FiniteCheck("t={:.4f}", immediate=method in ADAPTIVE_SOLVERS)  # step control reads every step anyway
    with _progress(progress, f"ODE {method}") as bar:
        evaluate = _evaluator(denoise, transport, cond, bar, finite)

        def velocity(t, x):
            output, t_batch = evaluate(x, t)
            return transport.velocity(output, x, t_batch)

        x = _integrate(velocity, noise, t0, t1, method, num_steps, atol, rtol, time_shift)
    finite.report()
    return x


@torch.no_grad()
def sample_sde(denoise, transport, noise, *, method="euler", diffusion_form="sigma", diffusion_norm=1.0,
               last_step="mean", last_step_size=0.04, num_steps=250, time_shift=1.0, generator=None, progress=True,
               **cond):
    """Integrate the reverse SDE dx = [v + w_t s] dt + sqrt(2 w_t) dW from noise to data, as SiT.

    num_steps time points span [t0, t1 = 1 - last_step_size]: num_steps - 1 stochastic steps, then
    a last step of size last_step_size without noise. Each step evaluates the model once (twice for
    Heun): velocity and score come from one output.

    Args:
        denoise: the model, denoise(x, t, **cond), t flow times in [0, 1] (1: data).
        transport: a Transport: the path, the prediction and the sampling interval.
        noise: the starting Gaussian noise.
        method: "euler" (Euler-Maruyama) or "heun" (noise first, then a Heun step on the drift).
        diffusion_form: w_t, one of DIFFUSION_FORMS ("sigma" is SiT's default).
        diffusion_norm: the scale of w_t.
        last_step: "mean" (drift step), "tweedie" (the posterior mean E[x1 | x_t]), "euler"
            (velocity step) or None (no last step; then t1 = 1 - eps).
        last_step_size: the size of the last, noiseless step.
        num_steps: time points of the integration.
        time_shift: > 1 crowds the steps at the noise end (`time_grid`).
        generator: a torch.Generator for the Brownian increments (reproducible runs).
        progress: show a progress bar.
        **cond: passed to denoise on every call, e.g. y=labels.

    Returns:
        Tensor: the samples.
    """
    method = method.lower()
    last_step = last_step.lower() if isinstance(last_step, str) else last_step
    check_choice("SDE method", method, SDE_METHODS)
    check_choice("diffusion form", diffusion_form, DIFFUSION_FORMS)
    check_choice("last step", last_step, LAST_STEPS)
    _check_steps(num_steps, 2)
    _check_shift(time_shift, method)
    if last_step is None:
        last_step_size = 0.0
    elif not 0 < last_step_size < 1:
        raise ValueError(f"last_step_size must be in (0, 1), got {last_step_size}")
    t0, t1 = transport.interval(sde=True, diffusion_form=diffusion_form, last_step_size=last_step_size)
    if diffusion_form == "SBDM" and t0 == 0 and transport.path_type != "VP":
        raise ValueError(f"the SBDM diffusion is infinite at t=0 on the {transport.path_type} path: "
                         "set the transport's sample_eps > 0 (e.g. 1e-3)")
    if method == "heun" and t1 >= 1:
        raise ValueError("the Heun SDE evaluates the score at its end time t=1, where it is undefined: use a last step "
                         "(e.g. last_step='mean') or a transport with sample_eps > 0")
    path = transport.path
    times = time_grid(t0, t1, num_steps, time_shift, noise.dtype, noise.device)
    # equal steps: one step size; a shifted grid: each step's own
    steps = (times[1:] - times[:-1]) if time_shift != 1.0 else (times[1] - times[0]).expand(num_steps - 1)

    finite = FiniteCheck("t={:.4f}")
    with _progress(progress, f"SDE {method}") as bar:
        evaluate = _evaluator(denoise, transport, cond, bar, finite)

        def diffusion(x, t):
            return path.diffusion(expand_like(t.expand(x.shape[0]), x), diffusion_form, diffusion_norm)

        def drift(x, t):
            output, t_batch = evaluate(x, t)
            return transport.velocity(output, x, t_batch) + diffusion(x, t) * transport.score(output, x, t_batch)

        x = noise
        for t, dt in zip(times[:-1], steps):
            dw = randn_like(x, generator) * dt.sqrt()
            if method == "euler":
                x = x + drift(x, t) * dt + torch.sqrt(2 * diffusion(x, t)) * dw
            else:
                x_hat = x + torch.sqrt(2 * diffusion(x, t)) * dw
                k1 = drift(x_hat, t)
                k2 = drift(x_hat + dt * k1, t + dt)
                x = x_hat + 0.5 * dt * (k1 + k2)

        end = times[-1]
        if last_step == "mean":
            x = x + drift(x, end) * last_step_size
        elif last_step == "euler":
            output, t_batch = evaluate(x, end)
            x = x + transport.velocity(output, x, t_batch) * last_step_size
        elif last_step == "tweedie":
            output, t_batch = evaluate(x, end)
            t_x = expand_like(t_batch, x)
            alpha, sigma = path.alpha(t_x)[0], path.sigma(t_x)[0]
            x = (x + sigma**2 * transport.score(output, x, t_batch)) / alpha
    finite.report()
    return x


def log_likelihood(denoise, transport, x, *, method="dopri5", num_steps=50, atol=1e-6, rtol=1e-3, generator=None,
                   progress=True, **cond):
    """(log p(x) in nats per sample, z): integrate data x at t1 back to the prior at t0 with the
    instantaneous change of variables, d log p / dt = -div v. The divergence is Hutchinson's
    estimate eps^T (dv/dx) eps with one Rademacher probe per sample, drawn once per solve (the
    ODE stays deterministic, so adaptive step control works). log p(x) = log N(z; 0, I) -
    integral of div v over [t0, t1]. Divide by (numel / N) * ln 2 for bits per dimension.
    """
    method = _ode_solver(method)
    _check_steps(num_steps, 1)
    t0, t1 = transport.interval()
    gen_device = generator.device if generator is not None else x.device
    probe = (torch.randint(0, 2, x.shape, generator=generator, device=gen_device) * 2 - 1).to(x)

    finite = FiniteCheck("t={:.4f}", immediate=method in ADAPTIVE_SOLVERS)
    with _progress(progress, f"likelihood {method}") as bar:
        evaluate = _evaluator(denoise, transport, cond, bar, finite)

        def dynamics(t, state):
            x_t = state[0].detach().requires_grad_(True)
            with torch.enable_grad():
                output, t_batch = evaluate(x_t, t)
                velocity = transport.velocity(output, x_t, t_batch)
                (grad,) = torch.autograd.grad((velocity * probe).sum(), x_t)
            return velocity.detach(), (grad * probe).flatten(1).sum(1)

        with torch.no_grad():
            z, integral = _integrate(dynamics, (x, x.new_zeros(x.shape[0])), t1, t0, method, num_steps, atol, rtol)
    finite.report()
    prior = -0.5 * (z.flatten(1) ** 2 + math.log(2 * math.pi)).sum(1)
    return prior + integral, z  # integral runs t1 -> t0, so it is minus the integral over [t0, t1]
