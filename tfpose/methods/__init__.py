"""Method registrations: each module binds a codec, a model builder, a loss and extra training
stages under one name (:class:`tfpose.registry.Method`)."""
