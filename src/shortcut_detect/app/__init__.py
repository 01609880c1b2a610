"""The interactive explorer (Gradio; optional extra `app`)."""
