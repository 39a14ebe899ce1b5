"""Errors answer in the shape of the protocol the request came in on."""
from localllm.server.errors import ApiError, protocol_of


def test_paths_map_to_protocols():
    assert protocol_of("/v1/messages") == "anthropic"
    assert protocol_of("/v1/messages/count_tokens") == "anthropic"
    assert protocol_of("/v1/messagesx") == "openai"
    assert protocol_of("/api/chat") == "ollama"
    assert protocol_of("/v1/chat/completions") == "openai"
    assert protocol_of("/nope") == "openai"


def test_each_protocol_has_its_own_body():
    error = ApiError(404, "model 'x' not found", param="model")
    assert error.body() == {"error": {"message": "model 'x' not found", "type": "invalid_request_error",
                                      "param": "model", "code": None}}
    assert error.body("anthropic") == {"type": "error",
                                       "error": {"type": "not_found_error", "message": "model 'x' not found"}}
    assert error.body("ollama") == {"error": "model 'x' not found"}
    assert ApiError(500, "boom").body("anthropic")["error"]["type"] == "api_error"
