"""The SiT training objective (stochastic interpolants) and the model-output conversions samplers use.

Time runs as in SiT: t = 0 is noise, t = 1 is data, and the model sees t in [0, 1] as is.
"""

import torch

from vlgen.core.choices import check_choice
from vlgen.core.reductions import mean_flat
from vlgen.core.times import check_time_sampling, unit_times
from vlgen.transport.paths import PATHS, expand_like

PREDICTIONS = ("velocity", "score", "noise")
DEFAULT_PREDICTION = "velocity"  # SiT's
LOSS_WEIGHTS = (None, "velocity", "likelihood")


def _default_eps(path, prediction):
    """SiT's (train_eps, sample_eps) defaults: the VP path and the score/noise predictions on the
    other paths divide by quantities that vanish at the ends of [0, 1]; the velocity of Linear and
    GVP is finite everywhere."""
    if path == "VP":
        return 1e-5, 1e-3
    if prediction != "velocity":
        return 1e-3, 1e-3
    return 0.0, 0.0


class Transport:
    """SiT's stochastic interpolants between noise (t = 0) and data (t = 1), as a training objective.

    Implements the objective interface of vlgen.objectives (kind, default_sampler, sample_times,
    training_losses), as GaussianDiffusion does.

    Args:
        path: "Linear", "GVP" or "VP".
        prediction: what the model outputs: "velocity", "score" or "noise".
        loss_weight: None, "velocity" or "likelihood" (score and noise predictions only, as in SiT).
        train_eps: how far training times stay from the ends of [0, 1]; None takes SiT's default.
        sample_eps: how far sampling times stay from the ends; None takes SiT's default.
        time_sampling: "uniform" on the training interval, or "logit-normal"
            (t = sigmoid(logit_mean + logit_std * z) mapped onto it).
        logit_mean: mean of the logit-normal times.
        logit_std: standard deviation of the logit-normal times.
    """

    kind = "flow"

    def __init__(self, path="Linear", prediction=DEFAULT_PREDICTION, loss_weight=None, train_eps=None, sample_eps=None,
                 time_sampling="uniform", logit_mean=0.0, logit_std=1.0):
        check_choice("path", path, PATHS)
        check_choice("prediction", prediction, PREDICTIONS)
        check_choice("loss_weight", loss_weight, LOSS_WEIGHTS)
        if loss_weight is not None and prediction == "velocity":
            raise ValueError("loss_weight applies to score and noise predictions; velocity prediction trains the "
                             "plain velocity MSE (as SiT does): set loss_weight=None")
        check_time_sampling(time_sampling, logit_std)
        default_train, default_sample = _default_eps(path, prediction)
        train_eps = default_train if train_eps is None else float(train_eps)
        sample_eps = default_sample if sample_eps is None else float(sample_eps)
        for name, value in (("train_eps", train_eps), ("sample_eps", sample_eps)):
            if not 0 <= value < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5) (a margin at each end of [0, 1]), got {value}")
        self.path = PATHS[path]()
        self.path_type, self.prediction, self.loss_weight = path, prediction, loss_weight
        self.train_eps, self.sample_eps = train_eps, sample_eps
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, logit_mean, logit_std

    @property
    def default_sampler(self):
        """20 flow-matching Euler steps where diffusers' flow matching fits (as good as 250 SDE steps
        in the sampler study, README), else SiT's ODE."""
        return "ode" if self.flow_matching_mismatch() else "flow-euler"

    def flow_matching_mismatch(self):
        """Why diffusers' flow matching (x = (1 - sigma) data + sigma noise, velocity output,
        sigma from 1 to 0) does not describe this transport, or None when it does (the Linear
        path with velocity prediction, whose ODE runs over the whole [0, 1]: `interval`)."""
        if self.path_type != "Linear" or self.prediction != "velocity":
            return (f"diffusers' flow matching is the Linear path with velocity prediction; the model has the "
                    f"{self.path_type} path with {self.prediction} prediction")
        return None

    def interval(self, *, training=False, sde=False, diffusion_form="SBDM", last_step_size=0.0, reverse=False):
        """(t0, t1) to train or integrate over, SiT's rules: the VP path stops eps short of the
        data end; Linear/GVP keep [0, 1] for the velocity ODE, start at eps for score/noise
        predictions and for the SBDM diffusion; an SDE with a last step stops last_step_size short
        of the data end. reverse swaps to data -> noise."""
        eps = self.train_eps if training else self.sample_eps
        t0, t1 = 0.0, 1.0
        end = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        if self.path_type == "VP":
            t1 = end
        elif self.prediction != "velocity" or sde:
            t0 = eps if (diffusion_form == "SBDM" and sde) or self.prediction != "velocity" else 0.0
            t1 = end
        if reverse:
            t0, t1 = 1 - t0, 1 - t1
        return t0, t1

    # -- training -------------------------------------------------------------------------
    def sample_times(self, batch_size, device, generator=None):
        """Training times in the training interval: uniform, or logit-normal mapped onto it."""
        t0, t1 = self.interval(training=True)
        gen_device = generator.device if generator is not None else device
        u = unit_times(batch_size, generator, gen_device, self.time_sampling, self.logit_mean, self.logit_std)
        return (t0 + (t1 - t0) * u).to(device)

    def training_losses(self, model, x1, t=None, noise=None, **model_kwargs):
        """dict(loss) per sample for data x1 (N, C, ...): velocity MSE against u_t, or for
        score/noise predictions the weighted MSE of SiT (score targets -x0 / sigma_t)."""
        t = self.sample_times(x1.shape[0], x1.device) if t is None else t
        noise = torch.randn_like(x1) if noise is None else noise
        t_x = expand_like(t.to(x1.dtype), x1)
        x_t, u_t = self.path.plan(t_x, noise, x1)
        output = check_output(model(x_t, t.to(x1.dtype), **model_kwargs), x_t).float()
        if self.prediction == "velocity":
            return {"loss": mean_flat((output - u_t.float()) ** 2)}
        t_x = t_x.float()
        sigma = self.path.sigma(t_x)[0]
        if self.loss_weight == "velocity":
            weight = (self.path.score_coefficient(t_x) / sigma) ** 2
        elif self.loss_weight == "likelihood":
            weight = self.path.score_coefficient(t_x) / sigma**2
        else:
            weight = torch.ones_like(t_x)
        if self.prediction == "noise":
            error = output - noise.float()
        else:
            error = output * sigma + noise.float()
        return {"loss": mean_flat(weight * error**2)}

    # -- model output -> quantities samplers need -----------------------------------------
    def velocity(self, output, x, t):
        """The probability-flow velocity from a model output at (x, t); t is (N,)."""
        t = expand_like(t, x)
        if self.prediction == "velocity":
            return output
        score = output if self.prediction == "score" else self.path.score_from_noise(output, t)
        return self.path.velocity_from_score(score, x, t)

    def score(self, output, x, t):
        """grad log p_t(x) from a model output."""
        t = expand_like(t, x)
        if self.prediction == "velocity":
            return self.path.score_from_velocity(output, x, t)
        return output if self.prediction == "score" else self.path.score_from_noise(output, t)

    def noise(self, output, x, t):
        """E[x0 | x_t] (the noise) from a model output."""
        t = expand_like(t, x)
        if self.prediction == "velocity":
            return self.path.noise_from_velocity(output, x, t)
        return output if self.prediction == "noise" else self.path.noise_from_score(output, t)


def check_output(output, x):
    """Flow objectives need one output channel per input channel."""
    if output.shape != x.shape:
        raise ValueError(
            f"model output {tuple(output.shape)} does not match its input {tuple(x.shape)}: flow objectives need "
            "as many output channels as input channels (use a SiT model, or learn_sigma=False / discard_sigma=True)"
        )
    return output
