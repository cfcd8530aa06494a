"""One study: the method registry, notebook parameters, running a method over prompts with
repetitions, and the quick demo."""
