%% The broker's time on every message published to this RabbitMQ node, as RabbitMQ 3.12+ does with
%% message_interceptors.incoming.set_header_timestamp.overwrite = true (and the community
%% rabbitmq_message_timestamp plugin on 3.6-3.11): the timestamp property (seconds) and the
%% timestamp_in_ms header.  For the private test nodes only (Debian 12 ships RabbitMQ 3.10).
-module(pp_message_timestamp).
-behaviour(rabbit_channel_interceptor).

-include("rabbit.hrl").
-include("rabbit_framing.hrl").

-export([description/0, intercept/3, applies_to/0, init/1]).

-rabbit_boot_step({?MODULE,
                   [{description, "broker time on published messages"},
                    {mfa, {rabbit_registry, register, [channel_interceptor, <<"pp message timestamp">>, ?MODULE]}},
                    {cleanup, {rabbit_registry, unregister, [channel_interceptor, <<"pp message timestamp">>]}},
                    {requires, rabbit_registry},
                    {enables, recovery}]}).

init(_Channel) -> undefined.

description() -> [{description, <<"Stamps published messages with the broker's time">>}].

applies_to() -> ['basic.publish'].

intercept(#'basic.publish'{} = Method, Content, _State) ->
    Decoded = rabbit_binary_parser:ensure_content_decoded(Content),
    Props = Decoded#content.properties,
    Millis = os:system_time(millisecond),
    Headers = case Props#'P_basic'.headers of undefined -> []; Found -> Found end,
    Stamped = lists:keystore(<<"timestamp_in_ms">>, 1, Headers, {<<"timestamp_in_ms">>, long, Millis}),
    {Method, Decoded#content{properties = Props#'P_basic'{timestamp = Millis div 1000, headers = Stamped},
                             properties_bin = none}};
intercept(Method, Content, _State) ->
    {Method, Content}.
