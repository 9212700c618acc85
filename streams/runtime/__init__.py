"""The one stage loop: poll, decode, process, produce, commit. Knows handlers, not what stages do."""
