"""What differs between the settings an earlier run recorded and the ones given now, in words: the
one wording of every refusal to resume (training, sampling, the demo)."""


def describe_differences(saved, current, keys=None, describe=None):
    """'key: A there, B now' for each key (default: every key of either mapping) whose values
    differ, joined by '; '; describe(key, before, now) may word a key itself (returning None
    keeps the default). An empty string when nothing differs."""
    words = []
    for key in sorted(keys if keys is not None else set(saved) | set(current)):
        before, now = saved.get(key), current.get(key)
        if before == now:
            continue
        words.append((describe and describe(key, before, now)) or f"{key}: {before!r} there, {now!r} now")
    return "; ".join(words)
