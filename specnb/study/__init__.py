"""One study: the method registry, notebook parameters, running a method over prompts with
repetitions, and the quick demo; and the studies across the link (``rtt``, ``adaptive_gamma``,
``capacity``, with ``replay``'s recorded edges)."""
