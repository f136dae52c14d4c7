"""Every error code the service reports: the one place a code is defined, so none is a free string.

`ErrorCode` is the `code` of an RFC 9457 problem the JSON API answers with (api/http/problems.py); the README's table of
codes lists exactly these, by HTTP status (`tests/test_codes_and_states.py` checks both ways and the statuses).
`FailureCode` is the `error.code` of a job or generation that ended `failed` (the worker writes it, the API and
the webhooks show it). Both are `StrEnum`s, so a member is its string wherever a string is stored or compared.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # 400
    BAD_REQUEST = "bad_request"
    # 401
    UNAUTHORIZED = "unauthorized"
    BAD_AUTHORIZATION_SCHEME = "bad_authorization_scheme"
    # 403
    FORBIDDEN = "forbidden"
    CSRF_FAILED = "csrf_failed"
    # 404
    NOT_FOUND = "not_found"
    VERSION_NOT_FOUND = "version_not_found"
    GENERATION_NOT_FOUND = "generation_not_found"
    IMAGE_NOT_FOUND = "image_not_found"
    # 405
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # 409
    CONFLICT = "conflict"
    JOB_FINAL = "job_final"
    NOT_RETRYABLE = "not_retryable"
    STYLE_BUSY = "style_busy"
    GENERATION_NOT_READY = "generation_not_ready"
    GENERATION_ACTIVE = "generation_active"
    IDEMPOTENCY_MISMATCH = "idempotency_mismatch"
    ADAPTER_CORRUPT = "adapter_corrupt"
    USER_EXISTS = "user_exists"
    KEY_REVOKED = "key_revoked"
    GENERATION_FINAL = "generation_final"
    TOO_MANY_KEYS = "too_many_keys"
    # 410
    GONE = "gone"
    BLOB_MISSING = "blob_missing"
    # 413
    TOO_LARGE = "too_large"
    BODY_TOO_LARGE = "body_too_large"
    STORAGE_QUOTA_EXCEEDED = "storage_quota_exceeded"
    # 415
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNSUPPORTED_IMAGE = "unsupported_image"
    BAD_CONTENT_TYPE = "bad_content_type"
    # 422
    INVALID = "invalid"
    VALIDATION_ERROR = "validation_error"
    BAD_JSON = "bad_json"
    BAD_QUERY = "bad_query"
    BAD_VALUE = "bad_value"
    BAD_FIELD = "bad_field"
    BAD_IMAGE = "bad_image"
    NO_IMAGE = "no_image"
    TOO_MANY_IMAGES = "too_many_images"
    BAD_KIND = "bad_kind"
    BAD_DESCRIPTOR = "bad_descriptor"
    BAD_CONTENT = "bad_content"
    BAD_CAPTION = "bad_caption"
    BAD_CLASS_WORD = "bad_class_word"
    BAD_PROMPT = "bad_prompt"
    BAD_STEPS = "bad_steps"
    BAD_SEED = "bad_seed"
    BAD_NUM_IMAGES = "bad_num_images"
    BAD_IDEMPOTENCY_KEY = "bad_idempotency_key"
    BAD_LAST_EVENT_ID = "bad_last_event_id"
    BAD_USER_NAME = "bad_user_name"
    MASK_WITHOUT_IMAGE = "mask_without_image"
    MASK_SIZE_MISMATCH = "mask_size_mismatch"
    STRENGTH_WITHOUT_IMAGE = "strength_without_image"
    SUBJECT_WEIGHT_WITHOUT_SUBJECT = "subject_weight_without_subject"
    WEBHOOK_REFUSED = "webhook_refused"
    WEBHOOK_EVENTS_WITHOUT_URL = "webhook_events_without_url"
    BAD_WEBHOOK_EVENTS = "bad_webhook_events"
    ADAPTER_AND_STYLE = "adapter_and_style"
    VERSION_WITHOUT_STYLE = "version_without_style"
    STYLE_NOT_TRAINED = "style_not_trained"
    NOT_A_STYLE = "not_a_style"
    NOT_A_SUBJECT = "not_a_subject"
    EMPTY_SELECTION = "empty_selection"
    DUPLICATE_PICK = "duplicate_pick"
    UNKNOWN_IMAGE_INDEX = "unknown_image_index"
    GENERATION_NOT_OF_STYLE = "generation_not_of_style"
    SELECTION_NOT_ALLOWED = "selection_not_allowed"
    # 429
    RATE_LIMITED = "rate_limited"
    TOO_MANY_JOBS = "too_many_jobs"
    TOO_MANY_STREAMS = "too_many_streams"
    TOO_MANY_QUEUED_IMAGES = "too_many_queued_images"
    TOO_MANY_UPLOADS = "too_many_uploads"
    # 500
    INTERNAL_ERROR = "internal_error"
    # 503
    UNAVAILABLE = "unavailable"
    DATABASE_UNAVAILABLE = "database_unavailable"
    DATABASE_BUSY = "database_busy"
    DECODER_BUSY = "decoder_busy"
    NOT_READY = "not_ready"


class FailureCode(StrEnum):
    """Why a job or generation failed (`error.code`); the pages put the common ones in words (styledrop.js)."""

    TOO_MANY_ATTEMPTS = "too_many_attempts"  # its runs kept dying: more than max_attempts claims
    STYLE_MISSING = "style_missing"
    BAD_IMAGE = "bad_image"
    MODEL_UNAVAILABLE = "model_unavailable"
    TRAINING_ERROR = "training_error"
    SELECTION_MISSING = "selection_missing"
    CLIP_UNAVAILABLE = "clip_unavailable"
    ROUND_ERROR = "round_error"
    ADAPTER_MISSING = "adapter_missing"
    ADAPTER_CORRUPT = "adapter_corrupt"
    ADAPTER_INCOMPATIBLE = "adapter_incompatible"
    ADAPTER_ERROR = "adapter_error"
    INVALID_REQUEST = "invalid_request"
    CANCELLED = "cancelled_on_request"  # a generation cancelled by its owner, an admin, or its owner being disabled
