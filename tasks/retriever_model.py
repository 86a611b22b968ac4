"""The code MLflow runs to load an rqsid retriever model ("models from code": no pickled object).
tasks.serving logs this file with every registered generator; MLflow executes it when loading."""

from mlflow.models import set_model

from tasks.serving import RetrieverModel

set_model(RetrieverModel())
