"""The Hub transport shared by dataset publishing (curation) and model publishing (pretrain, policy).

``client`` talks to the Hugging Face Hub (resumable uploads in rounds, retries with back-off, error
translation, downloads); ``card`` reads and writes the YAML header of a repo's card. Neither imports
torch or Ray, so publishing a dataset does not load the model stack and vice versa.
"""
