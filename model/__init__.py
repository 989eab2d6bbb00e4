"""Reference payload (train_gpt.py) and data preparation."""
