"""The GPT of the teaching texts, and its weights in the ecosystem's layouts."""
