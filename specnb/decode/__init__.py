"""The round and its roles: decoding loops, drafters, verifiers, acceptance rules, cache steps,
draft-length schedules, and the Hugging Face reference decoders."""
