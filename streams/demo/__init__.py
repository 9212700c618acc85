"""The hello-world and BEIR evaluation."""
