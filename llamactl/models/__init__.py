"""The model lifecycle, what every verb, the server and the draft model call:

- `resolve.resolve(ref, ...)`: a reference as typed -> a LocalModel (path, registry entry,
  name, license), pulling it first when allowed;
- `pull`: GGUF and --from safetensors pulls (present? plan, license gate, lock, fetch,
  verify, register);
- `quantize`: quantizing a file or a registered model (and registering the result);
- `remove`: removal plans (what goes, what is shared, bytes freed) with execute().

Nothing here prints or exits; errors are LlamactlErrors."""
