"""The sampler keyword arguments a pipeline accepts, checked before sampling: a misspelt option
would otherwise reach the denoiser as a conditioning input."""
from vlgen.core.choices import check_choice


def check_sampler_options(sampler, options, allowed):
    """allowed: sampler name -> the option names it takes."""
    check_choice("sampler", sampler, tuple(allowed))
    unknown = sorted(set(options) - set(allowed[sampler]))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for sampler {sampler!r}; it takes "
                         f"{', '.join(allowed[sampler])}")
