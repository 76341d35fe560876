"""Editing nested config dicts in tests (checkpoint metadata written wrong on purpose)."""


def setter(dotted: str, value):
    """A function that sets config["a"]["b"]... = value for the dotted path "a.b..."."""

    def edit(config):
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value

    return edit
