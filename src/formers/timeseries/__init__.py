"""Time-series forecasting: data and protocol, RevIN, SAMformer, baselines, the ``forecast`` task.

Importing this package registers the forecasters (registry kind ``forecaster``) and the task.
Pathformer (``formers.timeseries.pathformer``) is registered too when its module is present.
"""

import importlib.util

from formers.timeseries import linear, patchtst, samformer  # noqa: F401  (register forecasters)
from formers.timeseries.forecaster import (ForecasterConfig, build_forecaster, forecaster_config,
                                           load_forecaster)
from formers.timeseries.revin import RevIN
from formers.timeseries.samformer import SAMformer, SAMformerConfig

if importlib.util.find_spec("formers.timeseries.pathformer") is not None:
    from formers.timeseries import pathformer  # noqa: F401

from formers.timeseries import task  # noqa: E402,F401  (registers the forecast task)
from formers.timeseries import weather_task  # noqa: E402,F401  (WeatherFormer models and tasks)

__all__ = ["ForecasterConfig", "RevIN", "SAMformer", "SAMformerConfig", "build_forecaster",
           "forecaster_config", "load_forecaster"]
