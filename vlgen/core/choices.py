"""One error for an option outside its allowed values, naming the option and the choices."""


def check_choice(option, value, choices):
    if value not in choices:
        raise ValueError(f"unknown {option} {value!r}; choose one of {tuple(choices)}")
    return value
