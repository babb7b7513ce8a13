"""A registered version at work: the MLflow pyfunc scorer (pyfunc) and the bounded HTTP
server around MLflow's scoring app (server).

pyfunc ships inside every logged model, so it may import only hvae.model, hvae.evaluation
(the classifier and detector), hvae.artifacts, hvae.extras and hvae.errors (the package code
a version carries) and the serving requirements.
"""
