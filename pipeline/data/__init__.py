"""The data: files read and split (records.py), tokenized into a DataBundle (bundle.py) with the
tokenizer (tokenizer.py), and batched for Lightning (loader.py); demo.py writes the synthetic
default data set."""
