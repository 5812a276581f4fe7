"""Storybench's error hierarchy.

StorybenchError                 user-fixable; CLI exit code 2, UI st.error
├── ConfigError                 a config file or field is invalid
├── CatalogError                a sequence or rubric file is missing or invalid
├── ModelError                  a model cannot be found, loaded or used
│   ├── ModelFileError          missing, truncated or not-GGUF file
│   ├── ContextOverflowError    the prompt alone does not fit n_ctx
│   ├── DownloadError           a hub download failed (repo, file, network, disk)
│   └── ApiError                an OpenAI-compatible endpoint refused or failed
│       ├── AuthError           401/403: bad or missing key
│       ├── RateLimitError      429 after all retries
│       └── ApiTimeoutError     no answer in time
├── StoreError                  the store cannot be reached or written
│   └── DuplicateError          a write broke a unique key (the document is already there)
├── JobError                    a job cannot be started, stopped or resumed
├── PermissionDenied            the acting principal's role does not allow the action
└── JudgeError                  a judge answer is invalid (stored as a failure)

Every message says what went wrong, where, and how to fix it.
"""

from __future__ import annotations


class StorybenchError(Exception):
    """Base class for errors a user can fix."""


class ConfigError(StorybenchError):
    pass


class CatalogError(StorybenchError):
    pass


class ModelError(StorybenchError):
    pass


class ModelFileError(ModelError):
    pass


class ContextOverflowError(ModelError):
    pass


class DownloadError(ModelError):
    pass


class ApiError(ModelError):
    pass


class AuthError(ApiError):
    pass


class RateLimitError(ApiError):
    pass


class ApiTimeoutError(ApiError):
    pass


class StoreError(StorybenchError):
    pass


class DuplicateError(StoreError):
    """A write would break a unique key: that evaluation, judgement, verdict, vote or audit entry
    is already stored. Callers that write idempotently catch this, never the message text."""


class JobError(StorybenchError):
    pass


class JudgeError(StorybenchError):
    pass


class PermissionDenied(StorybenchError):
    """The acting principal may not do this (says who, their role, and the role needed)."""


class StopRequested(Exception):
    """Raised inside generation when the user asked the evaluation to stop.

    Not a StorybenchError: it is control flow, never shown as an error.
    """


class LeaseLost(StopRequested):
    """This worker's claim on an evaluation was taken over (requeued, reclaimed or reset).

    A stop, not an error: the new owner carries on, and this worker writes nothing more.
    """
